"""``tamis``: the one entry point that the local executor, the pods, the Spark applications
and people call."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from typing import Any

import yaml

from tamis import storage
from tamis.dataset import Dataset
from tamis.engines import Engine, make_engine
from tamis.gates import validate
from tamis.lease import LeaseHeld
from tamis.pipeline import ConfigError, Pipeline, check_pipeline, load_pipeline
from tamis.release import ReleaseError
from tamis.runner import StageError, run_fused, run_stage
from tamis.storage import StorageError

log = logging.getLogger("tamis")

# What a person can cause and fix: said in one line, never as a traceback.
USER_ERRORS = (ConfigError, StageError, StorageError, LeaseHeld, ReleaseError, OSError, ValueError, LookupError)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args) or 0
    except USER_ERRORS as exc:
        print(f"tamis: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tamis", description=__doc__)
    sub = parser.add_subparsers(required=True, dest="command")

    run = sub.add_parser("run", help="run one stage over a dataset")
    run.add_argument("stage", help="a stage name of the pipeline")
    _pipeline_args(run)
    run.add_argument("--input", help="input dataset URL (default: the previous stage of this run)")
    run.add_argument("--output", help="output dataset URL (default: <storage_root>/runs/<run-id>/<stage>)")
    run.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="override a stage parameter (YAML value)"
    )
    run.add_argument(
        "--shard", action="append", metavar="NAME", help="process and commit only these input shards (no manifest)"
    )
    steps = run.add_mutually_exclusive_group()
    steps.add_argument(
        "--plan-only", action="store_true", help="a whole-dataset stage: write its plan, process no shard"
    )
    steps.add_argument(
        "--manifest-only", action="store_true", help="write the manifest of shards committed by --shard runs"
    )
    run.add_argument("--rebuild", action="store_true", help="replace an output made by other parameters, input or code")
    run.set_defaults(func=_cmd_run)

    build = sub.add_parser("build", help="check the pipeline, then run every stage in order with its gate")
    _pipeline_args(build)
    build.add_argument("--param", action="append", default=[], metavar="STAGE.KEY=VALUE")
    build.add_argument("--rebuild", action="store_true", help="replace outputs made by other parameters, input or code")
    build.set_defaults(func=_cmd_build)

    check = sub.add_parser("check", help="validate a pipeline config and everything its stages need, running nothing")
    check.add_argument(
        "pipeline", nargs="?", default="default", help="pipeline name under include/pipelines or a YAML path"
    )
    check.set_defaults(func=_cmd_check)

    schema = sub.add_parser("schema", help="print the JSON Schema of a pipeline config (for editors)")
    schema.set_defaults(func=_cmd_schema)

    shards = sub.add_parser("shards", help="list the input shards of a stage (what mapped tasks fan out over)")
    shards.add_argument("stage")
    _pipeline_args(shards)
    shards.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    shards.set_defaults(func=_cmd_shards)

    gate = sub.add_parser("validate", help="run a stage's quality gate (Great Expectations) on its output")
    gate.add_argument("stage")
    _pipeline_args(gate)
    gate.add_argument("--dataset", help="dataset URL (default: the stage's output in this run)")
    gate.add_argument("--allow-empty", action="store_true", help="an empty dataset passes (a day with no new data)")
    gate.set_defaults(func=_cmd_validate)

    append = sub.add_parser("append", help="publish a run's last corpus stage as a date partition of the corpus")
    _pipeline_args(append)
    append.add_argument("--date", required=True, help="the partition, YYYY-MM-DD")
    append.add_argument("--owner", help="the nightly run that claimed the day (its claim is checked, then given back)")
    append.set_defaults(func=_cmd_append)

    nightly = sub.add_parser("nightly", help="the incremental ingest of one day, in date order")
    nightly_sub = nightly.add_subparsers(required=True, dest="nightly_command")
    claim = nightly_sub.add_parser("claim", help="claim a day once every earlier day is in the corpus (waits)")
    _pipeline_args(claim)
    claim.add_argument("--date", required=True)
    claim.add_argument("--owner", required=True, help="who claims: the nightly run")
    claim.add_argument("--wait-s", type=float, default=3600.0, help="how long to wait for earlier days and other runs")
    claim.set_defaults(func=_cmd_nightly_claim)
    day = nightly_sub.add_parser("run", help="claim a day, run the corpus stages on its partition, append it")
    _pipeline_args(day)
    day.add_argument("--date", required=True)
    day.add_argument("--wait-s", type=float, default=3600.0)
    day.set_defaults(func=_cmd_nightly_run)

    summary = sub.add_parser("summary", help="print the per-stage counts of a run")
    _pipeline_args(summary)
    summary.add_argument("--json", action="store_true")
    summary.set_defaults(func=_cmd_summary)

    from tamis.lookup import add_lookup_commands
    from tamis.quality_model import add_command as add_train_quality
    from tamis.release import add_release_commands

    add_lookup_commands(sub)
    add_release_commands(sub)
    add_train_quality(sub)
    return parser


def _pipeline_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default="default", help="pipeline name under include/pipelines or a YAML path")
    parser.add_argument("--run-id", default="local", help="names the run's folder under the storage root")
    parser.add_argument("--workers", type=int, help="worker processes of the local engine (default: the pipeline's)")
    parser.add_argument(
        "--engine", choices=["local", "spark"], help="where the stage runs (default: the pipeline's execution.mode)"
    )


def parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param expects KEY=VALUE, got {pair!r}")
        parsed = yaml.safe_load(value)
        # YAML reads 2026-11-20 as a date; stage parameters keep dates as ISO strings.
        params[key] = parsed.isoformat() if isinstance(parsed, (datetime.date, datetime.datetime)) else parsed
    return params


class Engines:
    """The engines of one command: a Spark session is started once and shared by its stages."""

    def __init__(self, pipeline: Pipeline, forced: str | None = None, workers: int | None = None):
        self.pipeline = pipeline
        self.forced = forced
        self.workers = workers or pipeline.workers
        self._spark: Engine | None = None

    def name_for(self, stage: str) -> str:
        return self.forced or self.pipeline.engine_for(stage)

    def for_stage(self, stage: str) -> Engine:
        name = self.name_for(stage)
        if name == "spark":
            if self._spark is None:
                spark = self.pipeline.execution.spark
                self._spark = make_engine("spark", spark_master=spark.master, spark_conf=spark.conf)
            return self._spark
        return make_engine("local", self.workers)


def stage_io(
    pipeline: Pipeline, stage: str, run_id: str, input_url: str | None = None, output_url: str | None = None
) -> tuple[str | None, str]:
    """Where a stage of a run reads and writes by default: the previous stage's output."""
    if input_url is None and (previous := pipeline.previous_stage(stage)) is not None:
        input_url = pipeline.stage_url(run_id, previous)
    return input_url, output_url or pipeline.stage_url(run_id, stage)


def run_one(
    pipeline: Pipeline,
    stage: str,
    run_id: str,
    input_url: str | None = None,
    output_url: str | None = None,
    workers: int | None = None,
    overrides: dict[str, Any] | None = None,
    only_shards: list[str] | None = None,
    engines: Engines | None = None,
    step: str = "all",
    rebuild: bool = False,
) -> dict[str, Any] | None:
    input_url, output_url = stage_io(pipeline, stage, run_id, input_url, output_url)
    engines = engines or Engines(pipeline, workers=workers)
    return run_stage(
        pipeline.stage(stage, overrides),
        input_url,
        output_url,
        engine=engines.for_stage(stage),
        only_shards=only_shards,
        step=step,
        rebuild=rebuild,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.pipeline)
    step = "plan" if args.plan_only else "manifest" if args.manifest_only else "all"
    engines = Engines(pipeline, args.engine, args.workers)
    manifest = run_one(
        pipeline,
        args.stage,
        args.run_id,
        args.input,
        args.output,
        overrides=parse_params(args.param),
        only_shards=args.shard,
        engines=engines,
        step=step,
        rebuild=args.rebuild,
    )
    if manifest is None:
        done = {"committed_shards": args.shard} if args.shard else {"planned": True}
        print(json.dumps({"stage": args.stage, **done}))
    else:
        print(json.dumps({"stage": args.stage, "output": manifest["output"], "counts": manifest["counts"]}))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.pipeline)
    problems = check_pipeline(pipeline)
    for problem in problems:
        print(f"tamis: error: {pipeline.path}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{pipeline.path}: ok ({len(pipeline.stage_names)} stages: {', '.join(pipeline.stage_names)})")
    return 2 if problems else 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from tamis.schema import pipeline_schema

    print(json.dumps(pipeline_schema(), indent=2))
    return 0


def _cmd_shards(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.pipeline)
    input_url, _ = stage_io(pipeline, args.stage, args.run_id)
    for shard in pipeline.stage(args.stage, parse_params(args.param)).input_shards(input_url):
        print(shard.name)
    return 0


def validate_one(
    pipeline: Pipeline, stage: str, run_id: str, dataset_url: str | None = None, allow_empty: bool = False
) -> dict[str, Any]:
    storage.check_reachable(pipeline.storage_root)
    config = pipeline.gate(stage)
    if allow_empty:
        config = config.model_copy(update={"min_rows": 0})
    result = validate(dataset_url or pipeline.stage_url(run_id, stage), stage, config)
    for failure in result["failed"]:
        log.error("gate %s failed: %s %s", stage, failure["expectation"], failure["kwargs"])
    log.info("gate %s: %s (%d expectations)", stage, "passed" if result["success"] else "FAILED", result["evaluated"])
    return result


def _cmd_validate(args: argparse.Namespace) -> int:
    result = validate_one(load_pipeline(args.pipeline), args.stage, args.run_id, args.dataset, args.allow_empty)
    return 0 if result["success"] else 1


def append_day(pipeline: Pipeline, run_id: str, day: str, owner: str | None) -> dict[str, Any]:
    from tamis import corpus, nightly, tracking
    from tamis.trends import apply_drift_check

    if owner:
        nightly.check_claim(pipeline, day, owner)
    drift = apply_drift_check(pipeline, run_id, day)  # with on_breach: fail, a breach stops here
    last = pipeline.corpus_stages[-1]
    manifest = corpus.append(pipeline.stage_url(run_id, last), pipeline.corpus_url, day, pipeline.corpus_hash_key())
    if owner:
        nightly.release(pipeline, day, owner)
    tracking.track_nightly(pipeline, run_id, day, manifest, drift)
    return manifest


def _cmd_append(args: argparse.Namespace) -> int:
    manifest = append_day(load_pipeline(args.pipeline), args.run_id, args.date, args.owner)
    print(json.dumps({"partition": manifest["output"], "documents": manifest["counts"]["kept"]}))
    return 0


def nightly_overrides(pipeline: Pipeline, stage: str, day: str) -> dict[str, Any]:
    """A stage's parameters in the nightly run of ``day``: what it declares it needs."""
    return pipeline.stage(stage).corpus_params(pipeline.corpus(day))


def _cmd_nightly_claim(args: argparse.Namespace) -> int:
    from tamis import nightly

    nightly.claim(load_pipeline(args.pipeline), args.date, args.owner, args.wait_s)
    print(json.dumps({"claimed": args.date, "owner": args.owner}))
    return 0


def _cmd_nightly_run(args: argparse.Namespace) -> int:
    import uuid

    from tamis import nightly

    pipeline = load_pipeline(args.pipeline)
    problems = check_pipeline(pipeline)
    if problems:
        raise ConfigError(f"{pipeline.path}: " + "; ".join(problems))
    owner = f"nightly/{args.run_id}/{uuid.uuid4().hex[:8]}"
    nightly.claim(pipeline, args.date, owner, args.wait_s)
    try:
        engines = Engines(pipeline, args.engine, args.workers)
        overrides = {stage: nightly_overrides(pipeline, stage, args.date) for stage in pipeline.corpus_stages}
        for group in stage_groups(pipeline, engines, pipeline.corpus_stages):
            run_group(pipeline, group, args.run_id, engines, overrides)
            for stage in group:
                if not validate_one(pipeline, stage, args.run_id, allow_empty=True)["success"]:
                    print(f"tamis: quality gate of stage {stage!r} failed; the day was not appended", file=sys.stderr)
                    return 1
        manifest = append_day(pipeline, args.run_id, args.date, owner)
    finally:
        nightly.release(pipeline, args.date, owner)
    print(json.dumps({"partition": manifest["output"], "documents": manifest["counts"]["kept"]}))
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.pipeline)
    problems = check_pipeline(pipeline)
    if problems:
        for problem in problems:
            print(f"tamis: error: {pipeline.path}: {problem}", file=sys.stderr)
        return 2
    overrides: dict[str, dict[str, Any]] = {}
    for key, value in parse_params(args.param).items():
        stage, _, name = key.partition(".")
        pipeline.spec(stage)  # an unknown stage is an error before anything runs
        overrides.setdefault(stage, {})[name] = value
    engines = Engines(pipeline, args.engine, args.workers)
    for group in stage_groups(pipeline, engines, pipeline.stage_names):
        run_group(pipeline, group, args.run_id, engines, overrides, args.rebuild)
        for stage in group:
            if not validate_one(pipeline, stage, args.run_id)["success"]:
                print(f"tamis: quality gate of stage {stage!r} failed; later stages were not run", file=sys.stderr)
                return 1
    summary = run_summary(pipeline, args.run_id)
    print(format_summary(summary))
    track_build(pipeline, args.run_id, summary)
    return 0


def stage_groups(pipeline: Pipeline, engines: Engines, stages: list[str]) -> list[list[str]]:
    """Stages in order, consecutive per-batch stages on one engine together when the pipeline
    fuses them (``execution.fuse_batch_stages``), else one stage a group."""
    groups: list[tuple[list[str], bool]] = []
    for stage in stages:
        fusable = pipeline.execution.fuse_batch_stages and pipeline.stage_type(stage).kind == "batch"
        if fusable and groups and groups[-1][1] and engines.name_for(stage) == engines.name_for(groups[-1][0][-1]):
            groups[-1][0].append(stage)
        else:
            groups.append(([stage], fusable))
    return [group for group, _ in groups]


def run_group(
    pipeline: Pipeline,
    group: list[str],
    run_id: str,
    engines: Engines,
    overrides: dict[str, dict[str, Any]],
    rebuild: bool = False,
) -> None:
    if len(group) == 1:
        run_one(pipeline, group[0], run_id, overrides=overrides.get(group[0]), engines=engines, rebuild=rebuild)
        return
    input_url, _ = stage_io(pipeline, group[0], run_id)
    run_fused(
        [pipeline.stage(s, overrides.get(s)) for s in group],
        input_url,
        [pipeline.stage_url(run_id, s) for s in group],
        engine=engines.for_stage(group[0]),
        rebuild=rebuild,
    )


def _cmd_summary(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.pipeline)
    storage.check_reachable(pipeline.storage_root)
    summary = run_summary(pipeline, args.run_id)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    track_build(pipeline, args.run_id, summary)
    return 0


def track_build(pipeline: Pipeline, run_id: str, summary: dict[str, Any]) -> None:
    """The end of a corpus build: the run goes to experiment tracking (MLflow)."""
    from tamis import tracking

    if any(s["status"] == "done" for s in summary["stages"]):
        tracking.track_corpus_build(pipeline, run_id, summary)


def run_summary(pipeline: Pipeline, run_id: str) -> dict[str, Any]:
    stages: list[dict[str, Any]] = []
    for name in pipeline.stage_names:
        dataset = Dataset(pipeline.stage_url(run_id, name))
        if not dataset.is_complete():
            stages.append({"stage": name, "status": "not run"})
            continue
        manifest = dataset.manifest()
        stages.append(
            {
                "stage": name,
                "status": "done",
                **manifest["counts"],
                "elapsed_s": manifest["elapsed_s"],
                "drop_reasons": manifest["drop_reasons"],
                "quarantine_reasons": manifest["quarantine_reasons"],
            }
        )
    done = [s for s in stages if s["status"] == "done"]
    return {
        "pipeline": pipeline.name,
        "run": pipeline.run_url(run_id),
        "output": pipeline.stage_url(run_id, done[-1]["stage"]) if done else None,
        "stages": stages,
        "elapsed_s": round(sum(s["elapsed_s"] for s in done), 3),
    }


def format_summary(summary: dict[str, Any]) -> str:
    width = max([14, *(len(s["stage"]) + 2 for s in summary["stages"])])
    lines = [
        f"pipeline {summary['pipeline']}: {summary['run']}",
        f"{'stage':<{width}}{'in':>10}{'kept':>10}{'dropped':>10}{'quarant.':>10}{'seconds':>10}  top reasons",
    ]
    for s in summary["stages"]:
        if s["status"] != "done":
            lines.append(f"{s['stage']:<{width}}{'(' + s['status'] + ')':>10}")
            continue
        reasons = {**s["drop_reasons"], **s["quarantine_reasons"]}
        top = ", ".join(f"{k}={v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
        lines.append(
            f"{s['stage']:<{width}}{s['in']:>10}{s['kept']:>10}{s['dropped']:>10}{s['quarantined']:>10}"
            f"{s['elapsed_s']:>10.1f}  {top}"
        )
    lines.append(f"output: {summary['output']}")
    lines.append(f"elapsed (sum of stages): {summary['elapsed_s']:.1f}s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
