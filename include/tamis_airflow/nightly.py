"""The ``nightly_ingest`` DAG: one date partition a night, appended to the corpus."""

from __future__ import annotations

from pathlib import Path

import pendulum
from airflow.sdk import DAG, CronDataIntervalTimetable, chain

from tamis.pipeline import load_pipeline
from tamis_airflow import commands
from tamis_airflow.corpus import corpus_asset, default_args, stage_operator

DATE = "{{ ds }}"


def build_nightly_dag(pipeline_name: str = "default", dag_id: str = "nightly_ingest") -> DAG:
    pipeline = load_pipeline(pipeline_name)
    with DAG(
        dag_id=dag_id,
        description=f"Append each day's new data of pipeline {pipeline.name!r} to its corpus",
        # A data interval, not a trigger time: the run for day D starts once D is over and
        # its logical date (ds) is D, the partition it reads.
        schedule=CronDataIntervalTimetable(pipeline.nightly.schedule, timezone="UTC"),
        start_date=pendulum.parse(pipeline.nightly.start_date, tz="UTC"),
        end_date=pendulum.parse(pipeline.nightly.end_date, tz="UTC") if pipeline.nightly.end_date else None,
        catchup=pipeline.nightly.catchup,
        # Days are appended in order: each one is deduplicated against all before it.
        max_active_runs=1,
        default_args=default_args(pipeline),
        tags=["tamis", "corpus", "nightly"],
        doc_md=Path(__file__).with_name("nightly_ingest.md").read_text(),
    ) as dag:
        tasks = []
        for stage in pipeline.corpus_stages:
            extra: list[str] = []
            if stage == "ingest":
                extra = ["--param", f"date={DATE}"]
            elif stage == "exact_dedup":
                extra = ["--param", f"corpus_url={pipeline.corpus_url}", "--param", f"exclude_partition={DATE}"]
            elif stage == "near_dedup":
                # The day's part of the index is named after the day: a re-run replaces it.
                extra = ["--param", f"index_url={pipeline.near_dedup_index_url}", "--param", f"index_part=date={DATE}"]
            tasks.append(stage_operator(pipeline, stage, commands.stage_argv(stage, pipeline.name, extra)))
            tasks.append(stage_operator(pipeline, f"{stage}_gate", [*commands.gate_argv(stage, pipeline.name), "--allow-empty"]))
        tasks.append(stage_operator(pipeline, "append", commands.append_argv(pipeline.name, DATE), outlets=[corpus_asset(pipeline)]))
        chain(*tasks)
    return dag
