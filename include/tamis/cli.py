"""``tamis``: the one entry point that the local executor, the pods and people call."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from typing import Any

import yaml

from tamis.storage import StorageError
from tamis.dataset import Dataset
from tamis.gates import validate
from tamis.pipeline import ConfigError, Pipeline, load_pipeline
from tamis.runner import StageError, run_stage

log = logging.getLogger("tamis")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args) or 0
    except (ConfigError, StageError, StorageError, FileNotFoundError, ValueError) as exc:
        print(f"tamis: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tamis", description=__doc__)
    sub = parser.add_subparsers(required=True, dest="command")

    run = sub.add_parser("run", help="run one stage over a dataset")
    run.add_argument("stage")
    _pipeline_args(run)
    run.add_argument("--input", help="input dataset URL (default: the previous stage of this run)")
    run.add_argument("--output", help="output dataset URL (default: <storage_root>/runs/<run-id>/<stage>)")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="override a stage parameter (YAML value)")
    run.add_argument("--shard", action="append", metavar="NAME", help="process and commit only these input shards (no manifest)")
    run.set_defaults(func=_cmd_run)

    build = sub.add_parser("build", help="run every stage of a pipeline in order, on this machine")
    _pipeline_args(build)
    build.add_argument("--param", action="append", default=[], metavar="STAGE.KEY=VALUE")
    build.set_defaults(func=_cmd_build)

    gate = sub.add_parser("validate", help="run a stage's quality gate (Great Expectations) on its output")
    gate.add_argument("stage")
    _pipeline_args(gate)
    gate.add_argument("--dataset", help="dataset URL (default: the stage's output in this run)")
    gate.add_argument("--allow-empty", action="store_true", help="an empty dataset passes (a day with no new data)")
    gate.set_defaults(func=_cmd_validate)

    append = sub.add_parser("append", help="publish a run's last corpus stage as a date partition of the corpus")
    _pipeline_args(append)
    append.add_argument("--date", required=True, help="the partition, YYYY-MM-DD")
    append.set_defaults(func=_cmd_append)

    summary = sub.add_parser("summary", help="print the per-stage counts of a run")
    _pipeline_args(summary)
    summary.add_argument("--json", action="store_true")
    summary.set_defaults(func=_cmd_summary)

    from tamis.release import add_release_commands

    add_release_commands(sub)
    return parser


def _pipeline_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default="default", help="pipeline name under include/pipelines or a YAML path")
    parser.add_argument("--run-id", default="local", help="names the run's folder under the storage root")
    parser.add_argument("--workers", type=int, help="worker processes (default: the pipeline's)")


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


def run_one(pipeline: Pipeline, stage: str, run_id: str, input_url: str | None = None, output_url: str | None = None,
            workers: int | None = None, overrides: dict[str, Any] | None = None,
            only_shards: list[str] | None = None) -> dict[str, Any] | None:
    if input_url is None and (previous := pipeline.previous_stage(stage)) is not None:
        input_url = pipeline.stage_url(run_id, previous)
    output_url = output_url or pipeline.stage_url(run_id, stage)
    return run_stage(pipeline.stage(stage, overrides), input_url, output_url, workers or pipeline.workers,
                     only_shards=only_shards)


def _cmd_run(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.pipeline)
    manifest = run_one(pipeline, args.stage, args.run_id, args.input, args.output, args.workers, parse_params(args.param),
                       only_shards=args.shard)
    if manifest is None:
        print(json.dumps({"stage": args.stage, "committed_shards": args.shard}))
    else:
        print(json.dumps({"stage": args.stage, "output": manifest["output"], "counts": manifest["counts"]}))
    return 0


def validate_one(pipeline: Pipeline, stage: str, run_id: str, dataset_url: str | None = None,
                 allow_empty: bool = False) -> dict[str, Any]:
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


def _cmd_append(args: argparse.Namespace) -> int:
    from tamis import corpus

    pipeline = load_pipeline(args.pipeline)
    last = pipeline.corpus_stages[-1]
    key = pipeline.stages.get("exact_dedup", {}).get("key", "normalized")
    manifest = corpus.append(pipeline.stage_url(args.run_id, last), pipeline.corpus_url, args.date, key)
    print(json.dumps({"partition": manifest["output"], "documents": manifest["counts"]["kept"]}))
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.pipeline)
    overrides: dict[str, dict[str, Any]] = {}
    for key, value in parse_params(args.param).items():
        stage, _, name = key.partition(".")
        overrides.setdefault(stage, {})[name] = value
    for stage in pipeline.stage_names:
        run_one(pipeline, stage, args.run_id, workers=args.workers, overrides=overrides.get(stage))
        if not validate_one(pipeline, stage, args.run_id)["success"]:
            print(f"tamis: quality gate of stage {stage!r} failed; later stages were not run", file=sys.stderr)
            return 1
    print(format_summary(run_summary(pipeline, args.run_id)))
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    summary = run_summary(load_pipeline(args.pipeline), args.run_id)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def run_summary(pipeline: Pipeline, run_id: str) -> dict[str, Any]:
    stages = []
    for name in pipeline.stage_names:
        dataset = Dataset(pipeline.stage_url(run_id, name))
        if not dataset.is_complete():
            stages.append({"stage": name, "status": "not run"})
            continue
        manifest = dataset.manifest()
        stages.append({"stage": name, "status": "done", **manifest["counts"], "elapsed_s": manifest["elapsed_s"],
                       "drop_reasons": manifest["drop_reasons"], "quarantine_reasons": manifest["quarantine_reasons"]})
    done = [s for s in stages if s["status"] == "done"]
    return {
        "pipeline": pipeline.name,
        "run": pipeline.run_url(run_id),
        "output": pipeline.stage_url(run_id, done[-1]["stage"]) if done else None,
        "stages": stages,
        "elapsed_s": round(sum(s["elapsed_s"] for s in done), 3),
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"pipeline {summary['pipeline']}: {summary['run']}",
             f"{'stage':<14}{'in':>10}{'kept':>10}{'dropped':>10}{'quarant.':>10}{'seconds':>10}  top reasons"]
    for s in summary["stages"]:
        if s["status"] != "done":
            lines.append(f"{s['stage']:<14}{'(' + s['status'] + ')':>10}")
            continue
        reasons = {**s["drop_reasons"], **s["quarantine_reasons"]}
        top = ", ".join(f"{k}={v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
        lines.append(f"{s['stage']:<14}{s['in']:>10}{s['kept']:>10}{s['dropped']:>10}{s['quarantined']:>10}{s['elapsed_s']:>10.1f}  {top}")
    lines.append(f"output: {summary['output']}")
    lines.append(f"elapsed (sum of stages): {summary['elapsed_s']:.1f}s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
