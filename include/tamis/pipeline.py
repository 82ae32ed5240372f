"""Pipeline configs: the YAML files under include/pipelines/, validated as one surface.

Every tunable lives there, and every section is checked when the file loads: unknown or
misspelt keys, duplicate keys, bad values and unset variables are errors before any stage
runs. Rules, once each:

* ``${VAR}`` and ``${VAR:-default}`` are substituted in the parsed values (never in the
  raw text, so a value cannot inject YAML); an unset variable without a default is an
  error naming it. A value that is exactly one variable takes the YAML type of what it
  expands to (``workers: ${TAMIS_WORKERS:-2}`` is the integer 2, an empty value is null).
* Relative paths resolve against the YAML file's folder: ``storage_root``, sources'
  ``path``, the release folders, and every stage parameter typed as a path.
* Defaults are written once, in the params classes; the default YAML may show them.

Stages are a list of instances, each with a unique ``name`` (its output folder, its task id)
and a ``type`` (a built-in, a registered name, or an import path; see :mod:`tamis.stages`);
the mapping form ``stages: {ingest: {...}, normalize: {...}}`` means name = type.
"""

from __future__ import annotations

import hashlib
import os
import re
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tamis import storage
from tamis.execution import ExecutionConfig
from tamis.gates import GateConfig, gate_config
from tamis.release import ReleaseConfig
from tamis.stage import CorpusContext, PathParam, Stage
from tamis.stages import UnknownStage, make_stage, stage_class
from tamis.tracking import MlflowConfig
from tamis.trends import DriftConfig

PIPELINES_DIR = Path(__file__).resolve().parent.parent / "pipelines"
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
_PIPELINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_TEAM_NAME = re.compile(r"^[a-z](?:[a-z0-9-]{0,38}[a-z0-9])?$")


class ConfigError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    """Where a source's raw files are and how to read them.

    ``kind``: ``local`` (a folder, an NFS mount: ``path``), ``s3`` (an ``s3://`` prefix:
    ``path``), ``git`` (a repository: ``url``, ``revision``, optionally the ``subdir`` holding
    the files) or ``http`` (files under a base ``url``, each listed in ``checksums`` with its
    sha256). Left out, it is ``s3`` for an ``s3://`` path and ``local`` for any other path.
    Credentials never appear here: ``connection`` names the Airflow connection that holds them.
    """

    # Never None once read (``_infer_kind``); optional in the JSON Schema, as in the YAML.
    kind: Literal["local", "s3", "git", "http"] = Field(default=None, validate_default=False)  # type: ignore[call-overload]
    path: str | None = None
    url: str | None = None
    revision: str | None = None  # git: a branch, tag or commit; default HEAD
    subdir: str | None = None  # git: the folder of the repository that holds the files
    checksums: dict[str, str] | None = None  # http: path under url -> sha256 of the file
    connection: str | None = None  # Airflow connection id (AIRFLOW_CONN_<ID> reaches the command)
    format: Literal["auto", "jsonl", "jsonl.gz", "parquet", "text", "warc"] = "auto"
    text_field: str = "text"
    id_field: str | None = None
    url_field: str | None = None
    # What kind of text the source holds; quality rules differ for code and prose.
    type: Literal["prose", "code"] = "prose"

    # A source name starts record ids (``<source>/<record id>``) and output part names, so it
    # holds no '/' (ids stay unambiguous) and cannot climb out of a folder.
    SAFE_NAME: ClassVar[re.Pattern] = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
    # The fields that say how files are read, whatever the kind of source.
    READ_FIELDS: ClassVar[tuple[str, ...]] = ("format", "text_field", "id_field", "url_field", "type")
    _FIELDS_OF_KIND: ClassVar[dict[str, set[str]]] = {
        "local": {"path"},
        "s3": {"path", "connection"},
        "git": {"url", "revision", "subdir", "connection"},
        "http": {"url", "checksums", "connection"},
    }
    _CONNECTION_ID: ClassVar[re.Pattern] = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,249}")
    _SHA256: ClassVar[re.Pattern] = re.compile(r"(?:sha256:)?([0-9a-fA-F]{64})")

    @classmethod
    def check_name(cls, name: str) -> str:
        if not cls.SAFE_NAME.fullmatch(name) or ".." in name:
            raise ValueError(
                f"source name {name!r} is not allowed: use 1 to 64 letters, digits, '.', '-' or '_', "
                "starting with a letter or digit, with no '..'"
            )
        return name

    @model_validator(mode="before")
    @classmethod
    def _infer_kind(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("kind") is None:
            if not isinstance(value.get("path"), str):
                raise ValueError("a source needs a path (a folder or an s3:// prefix), or a kind (git, http) and a url")
            value = {**value, "kind": "s3" if value["path"].startswith("s3://") else "local"}
        return value

    @model_validator(mode="after")
    def _fits_its_kind(self) -> SourceConfig:
        kind = self.kind
        given = {
            name
            for name in ("path", "url", "revision", "subdir", "checksums", "connection")
            if getattr(self, name) is not None
        }
        stray = sorted(given - self._FIELDS_OF_KIND[kind])
        if stray:
            raise ValueError(
                f"a {kind} source takes no {', '.join(stray)} "
                f"(it takes {', '.join(sorted(self._FIELDS_OF_KIND[kind]))})"
            )
        if kind in ("local", "s3"):
            if not self.path:
                raise ValueError(f"a {kind} source needs a path")
            if kind == "s3" and not self.path.startswith("s3://"):
                raise ValueError(f"an s3 source's path starts with s3://, got {self.path!r}")
            if kind == "local" and "://" in self.path and not self.path.startswith("file://"):
                raise ValueError(f"a local source's path is a folder, got {self.path!r} (set kind to s3, git or http)")
        else:
            if not self.url:
                raise ValueError(f"a {kind} source needs a url")
            _check_remote_url(self.url, kind)
        if self.connection is not None and not self._CONNECTION_ID.fullmatch(self.connection):
            raise ValueError(
                f"connection {self.connection!r} must be an Airflow connection id made of letters, "
                "digits and '_' (it becomes the variable AIRFLOW_CONN_<ID>)"
            )
        if kind == "git":
            revision = self.revision or "HEAD"
            if revision.startswith("-") or any(c.isspace() or ord(c) < 32 for c in revision) or ".." in revision:
                raise ValueError(f"revision {revision!r} is not a branch, tag or commit")
            if self.subdir is not None:
                _check_relative(self.subdir, "subdir")
        if kind == "http":
            if not self.checksums:
                raise ValueError("an http source lists its files under checksums: {path under url: sha256}")
            for relpath, digest in self.checksums.items():
                _check_relative(relpath, "a file of checksums")
                if not self._SHA256.fullmatch(str(digest).strip()):
                    raise ValueError(f"checksum of {relpath!r} must be a sha256 (64 hex digits), got {digest!r}")
        return self

    @field_validator("checksums")
    @classmethod
    def _plain_digests(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        plain = {}
        for relpath, digest in value.items():
            match = cls._SHA256.fullmatch(str(digest).strip())
            plain[relpath] = match.group(1).lower() if match else str(digest)
        return plain

    @property
    def location(self) -> str:
        """Where the source is, as a person reads it (never with credentials)."""
        if self.kind == "git":
            where = f"{self.url}@{self.revision or 'HEAD'}"
            return f"{where}:{self.subdir}" if self.subdir else where
        address = self.url if self.kind == "http" else self.path
        assert address is not None, "_fits_its_kind requires the url or the path of every kind"
        return address


def _check_remote_url(url: str, kind: str) -> None:
    from urllib.parse import urlsplit

    if url.startswith("-") or any(c.isspace() for c in url):
        raise ValueError(f"{url!r} is not a {kind} URL")
    scp_like = kind == "git" and "://" not in url and re.match(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:", url)
    schemes = ("http", "https") if kind == "http" else ("http", "https", "git", "ssh", "file")
    if not scp_like:
        parts = urlsplit(url)
        if parts.scheme not in schemes:
            raise ValueError(
                f"a {kind} source's url starts with {' or '.join(s + '://' for s in schemes)}, got {url!r}"
            )
        if parts.password is not None or (parts.username is not None and parts.scheme in ("http", "https")):
            raise ValueError(
                f"the url of a {kind} source holds credentials; name an Airflow connection (connection: <id>) instead"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"a {kind} source's url takes no query or fragment, got {url!r}")


def _check_relative(path: str, what: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{what} {path!r} must be a relative path without '.', '..' or empty parts")


class StageSpec(_Strict):
    """One stage instance of a pipeline."""

    name: str
    type: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"stage name {value!r} must start with a letter and hold only letters, digits and '_'")
        return value

    @field_validator("params", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return value or {}


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
    # The last stage whose output joins the corpus; None: the last of the leading stages that
    # declare they join it (tokenize, mix, pack and index make releases instead).
    until_stage: str | None = None

    @field_validator("start_date", "end_date", mode="before")
    @classmethod
    def _iso_date(cls, value: Any) -> str | None:
        if value is None or value == "":
            return None
        if not re.match(r"^\d{4}-\d{2}-\d{2}$", str(value)):
            raise ValueError(f"{value!r} is not a date YYYY-MM-DD")
        return str(value)


class Reports(_Strict):
    """What the report pages check across runs, and where runs are tracked."""

    drift: DriftConfig = Field(default_factory=DriftConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)


class Pipeline(_Strict):
    name: str
    path: str = Field(exclude=True)
    # The team that owns the pipeline, its runs and its releases (an Airflow team; it names the
    # team's Kubernetes service account and S3 prefix). None: no team, every user may read it.
    team: str | None = None
    storage_root: str
    # Airflow connection whose credentials reach an s3:// storage root (tasks export them).
    storage_connection: str = "aws_default"
    workers: int = Field(default=2, ge=1)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    sources: dict[str, SourceConfig]
    stages: list[StageSpec]
    gates: dict[str, dict[str, Any]] = Field(default_factory=dict)
    orchestration: Orchestration = Field(default_factory=Orchestration)
    nightly: Nightly = Field(default_factory=Nightly)
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)
    reports: Reports = Field(default_factory=Reports)

    @field_validator("name")
    @classmethod
    def _pipeline_name(cls, value: str) -> str:
        if not _PIPELINE_NAME.match(value):
            raise ValueError(f"pipeline name {value!r} must hold only letters, digits, '.', '_' and '-'")
        return value

    @field_validator("team")
    @classmethod
    def _team_name(cls, value: str | None) -> str | None:
        if value is not None and not _TEAM_NAME.match(value):
            raise ValueError(
                f"team {value!r} must be 1 to 40 lower-case letters, digits and '-', starting with a letter "
                "(it names a Kubernetes service account and an S3 prefix)"
            )
        return value

    @field_validator("sources")
    @classmethod
    def _source_names_are_safe(cls, value: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        for name in value:
            SourceConfig.check_name(name)
        return value

    @field_validator("stages", mode="before")
    @classmethod
    def _mapping_form(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return [{"name": name, "type": name, "params": params or {}} for name, params in value.items()]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Pipeline:
        names = [s.name for s in self.stages]
        if not names:
            raise ValueError("the pipeline has no stages")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"stage names must be unique; repeated: {twice}")
        stray = sorted(set(self.gates) - {"default", *names})
        if stray:
            raise ValueError(f"gates name stages the pipeline does not have: {stray}; stages: {names}")
        for label, listed in (
            ("execution.spark.stages", self.execution.spark.stages or []),
            ("execution.kubernetes.spark.stages", self.execution.kubernetes.spark.stages),
        ):
            unknown = sorted(set(listed) - set(names))
            if unknown:
                raise ValueError(f"{label} names stages the pipeline does not have: {unknown}; stages: {names}")
        if self.nightly.until_stage is not None and self.nightly.until_stage not in names:
            raise ValueError(f"nightly.until_stage {self.nightly.until_stage!r} is not a stage; stages: {names}")
        return self

    # -- stages ----------------------------------------------------------------------------

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    def spec(self, name: str) -> StageSpec:
        for spec in self.stages:
            if spec.name == name:
                return spec
        raise ConfigError(f"pipeline {self.name!r} has no stage {name!r}; it has: {', '.join(self.stage_names)}")

    def stage(self, name: str, overrides: dict[str, Any] | None = None) -> Stage:
        spec = self.spec(name)
        params = {**spec.params, **(overrides or {})}
        context = {"sources": self.sources, "pipeline": self.name}
        try:
            params = _resolve_stage_paths(stage_class(spec.type), params, Path(self.path).parent)
            return make_stage(spec.type, spec.name, params, context)
        except UnknownStage as exc:
            raise ConfigError(f"stage {name!r} in {self.path}: {exc}") from None
        except ValueError as exc:
            raise ConfigError(f"invalid parameters for stage {name!r} in {self.path}: {exc}") from exc

    def stage_type(self, name: str) -> type[Stage]:
        return stage_class(self.spec(name).type)

    def previous_stage(self, stage: str) -> str | None:
        names = self.stage_names
        index = names.index(self.spec(stage).name)
        return names[index - 1] if index > 0 else None

    def gate(self, name: str) -> GateConfig:
        try:
            return gate_config(self.gates, name, self.stage_type(name).default_gate)
        except ValueError as exc:
            raise ConfigError(f"invalid gate for stage {name!r} in {self.path}: {exc}") from exc

    def engine_for(self, name: str) -> str:
        """The engine a ``tamis`` command uses for stage ``name`` (outside a SparkApplication)."""
        execution = self.execution
        if execution.mode != "spark":
            return "local"
        listed = execution.spark.stages
        if listed is not None and name not in listed:
            return "local"
        return "spark" if "spark" in self.stage_type(name).engines else "local"

    # -- where things are ------------------------------------------------------------------

    def run_url(self, run_id: str) -> str:
        return storage.join(self.storage_root, "runs", safe_run_id(run_id))

    def stage_url(self, run_id: str, stage: str) -> str:
        return storage.join(self.run_url(run_id), self.spec(stage).name)

    @property
    def corpus_url(self) -> str:
        return storage.join(self.storage_root, "corpus", self.name)

    def corpus(self, date: str) -> CorpusContext:
        return CorpusContext(url=self.corpus_url, date=date)

    @property
    def corpus_stages(self) -> list[str]:
        """The stages a nightly run goes through before appending to the corpus."""
        names = self.stage_names
        if self.nightly.until_stage is not None:
            return names[: names.index(self.nightly.until_stage) + 1]
        leading = []
        for name in names:
            if not self.stage_type(name).joins_corpus:
                break
            leading.append(name)
        if not leading:
            raise ConfigError(f"{self.path}: no stage joins the corpus, so a nightly run has nothing to append")
        return leading

    def corpus_hash_key(self) -> str:
        """How the corpus's content hashes are computed: the setting of the exact-dedup stage
        of the nightly path, so that next nights compare like with like."""
        for name in self.corpus_stages:
            key = getattr(self.stage(name), "corpus_hash_key", None)
            if key is not None:
                return key
        return "normalized"


def safe_run_id(run_id: str) -> str:
    """A run id as a folder name, portable across filesystems and S3. Ids that need no
    change are kept; others (Airflow's carry ':' and '+') get a short hash of the original,
    so that two ids never share a folder."""
    if not run_id or not run_id.strip(". "):
        raise ConfigError(f"run id {run_id!r} is not a usable name")
    safe = re.sub(r"[^A-Za-z0-9._=-]+", "_", run_id)
    if safe == run_id and not safe.startswith("."):
        return safe
    digest = hashlib.blake2b(run_id.encode(), digest_size=4).hexdigest()
    return f"{safe.strip('._') or 'run'}-{digest}"


def resolve_pipeline_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        return candidate.resolve()
    named = PIPELINES_DIR / f"{name_or_path}.yaml"
    if named.exists():
        return named
    known = ", ".join(sorted(p.stem for p in PIPELINES_DIR.glob("*.yaml")))
    raise ConfigError(f"no pipeline config {name_or_path!r} (a YAML path, or one of: {known})")


def read_config(path: Path) -> dict[str, Any]:
    """The YAML file parsed (duplicate keys rejected), variables substituted, paths resolved."""
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except (yaml.YAMLError, DuplicateKey) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw = substitute_env(raw, path)
    base = path.parent
    raw["storage_root"] = resolve_path(raw.get("storage_root") or "../../data", base)
    for source in (raw.get("sources") or {}).values():
        if isinstance(source, dict) and isinstance(source.get("path"), str):
            source["path"] = resolve_path(source["path"], base)
    release = raw.get("release")
    if isinstance(release, dict):
        for key in ("workspace", "remote"):
            if isinstance(release.get(key), str):
                release[key] = resolve_path(release[key], base)
    return raw


def load_pipeline(name_or_path: str = "default") -> Pipeline:
    path = resolve_pipeline_path(name_or_path)
    raw = read_config(path)
    try:
        pipeline = Pipeline(path=str(path), **raw)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for name in pipeline.stage_names:
        pipeline.stage(name)  # validates every stage's parameters up front
        pipeline.gate(name)
    return pipeline


def check_pipeline(pipeline: Pipeline) -> list[str]:
    """Everything that can be known wrong before a stage runs: each stage's own readiness
    (files it needs, sources it names), the gates' expectation names, the corpus path.
    Returns the problems found (empty when the pipeline can run)."""
    from tamis.gates import unknown_expectations

    problems = []
    for name in pipeline.stage_names:
        try:
            pipeline.stage(name).check_ready()
        except Exception as exc:  # each stage's own error message names what is wrong
            problems.append(f"stage {name!r}: {exc}")
        unknown = unknown_expectations(pipeline.gate(name))
        if unknown:
            problems.append(f"gate of stage {name!r}: unknown expectations {unknown}")
    try:
        _ = pipeline.corpus_stages  # the property checks the nightly stage range
    except ConfigError as exc:
        problems.append(str(exc))
    return problems


def substitute_env(value: Any, path: Path, where: str = "") -> Any:
    """``${VAR}`` / ``${VAR:-default}`` in every string of a parsed config."""
    if isinstance(value, dict):
        return {k: substitute_env(v, path, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, path, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def expand(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ConfigError(f"{path}: {where} uses ${{{name}}}, which is not set (give a default: ${{{name}:-...}})")
        return default

    whole = _ENV.fullmatch(value.strip())
    expanded = _ENV.sub(expand, value)
    if whole:
        # One variable as the whole value takes the YAML type of its expansion.
        try:
            return yaml.safe_load(expanded) if expanded.strip() else None
        except yaml.YAMLError:
            return expanded
    return expanded


def resolve_path(path: str, base: Path) -> str:
    if "://" in path:
        return path
    return str((base / Path(path).expanduser()).resolve())


def _resolve_stage_paths(cls: type[Stage], params: dict[str, Any], base: Path) -> dict[str, Any]:
    """Stage parameters typed as paths, resolved against the config's folder."""
    return _resolve_model_paths(cls.Params, params, base)


def _resolve_model_paths(model: type[BaseModel], values: dict[str, Any], base: Path) -> dict[str, Any]:
    values = dict(values)
    for field_name, field in model.model_fields.items():
        value = values.get(field_name)
        nested = _nested_model(field.annotation)
        if nested is not None and isinstance(value, dict):
            values[field_name] = _resolve_model_paths(nested, value, base)  # a group of params (quality.model)
            continue
        marker = _path_marker(field)
        if marker is None or not isinstance(value, str) or not value or "://" in value or Path(value).is_absolute():
            continue
        if marker.may_be_name and not marker.looks_like_path(value) and not (base / value).exists():
            continue  # a name (e.g. a tokenizer on the hub), not a path
        values[field_name] = resolve_path(value, base)
    return values


def _path_marker(field) -> PathParam | None:
    """The PathParam of a field typed ``LocalPath``, ``PathOrName`` or ``LocalPath | None``."""
    found = [m for m in field.metadata if isinstance(m, PathParam)]
    for arg in typing.get_args(field.annotation):
        if typing.get_origin(arg) is typing.Annotated:
            found += [m for m in arg.__metadata__ if isinstance(m, PathParam)]
    return found[0] if found else None


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


class DuplicateKey(ValueError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise DuplicateKey(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
