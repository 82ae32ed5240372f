"""The ``nightly_ingest`` DAG: one date partition a night, appended to the corpus in date order."""

from __future__ import annotations

from pathlib import Path

import pendulum
from airflow.sdk import DAG, CronDataIntervalTimetable, chain

from tamis_airflow import commands
from tamis_airflow.corpus import checked_pipeline, corpus_asset, default_args, stage_operator, stage_tasks

DATE = "{{ ds }}"
# The claim on the day belongs to the DAG run: its retried tasks may take it again.
OWNER = "{{ dag.dag_id }}/{{ run_id }}"


def build_nightly_dag(pipeline_name: str = "default", dag_id: str = "nightly_ingest") -> DAG:
    pipeline = checked_pipeline(pipeline_name)
    nightly = pipeline.nightly
    wait_s = pipeline.orchestration.task_timeout_s - 60
    with DAG(
        dag_id=dag_id,
        description=f"Append each day's new data of pipeline {pipeline.name!r} to its corpus",
        # A data interval, not a trigger time: the run for day D starts once D is over and
        # its logical date (ds) is D, the partition it reads.
        schedule=CronDataIntervalTimetable(nightly.schedule, timezone="UTC"),
        # pendulum.parse is typed to return a date, time or duration too; a date string gives a DateTime.
        start_date=pendulum.parse(nightly.start_date, tz="UTC"),  # type: ignore[arg-type]
        end_date=pendulum.parse(nightly.end_date, tz="UTC") if nightly.end_date else None,  # type: ignore[arg-type]
        catchup=nightly.catchup,
        max_active_runs=1,
        default_args=default_args(pipeline),
        tags=["tamis", "corpus", "nightly"],
        doc_md=Path(__file__).with_name("nightly_ingest.md").read_text(),
    ) as dag:
        # Days are appended in order, one at a time, whatever runs them: each is deduplicated
        # against every day before it (tamis.nightly).
        tasks = [
            stage_operator(pipeline, "claim_day", commands.claim_argv(pipeline.name, DATE, OWNER, max(wait_s, 60)))
        ]
        corpus = pipeline.corpus(DATE)
        for stage in pipeline.corpus_stages:
            extra = [
                x
                for key, value in pipeline.stage(stage).corpus_params(corpus).items()
                for x in ("--param", f"{key}={value}")
            ]
            tasks += stage_tasks(pipeline, stage, commands.stage_argv(stage, pipeline.name, extra), pipeline.name)
            tasks.append(
                stage_operator(pipeline, f"{stage}_gate", [*commands.gate_argv(stage, pipeline.name), "--allow-empty"])
            )
        tasks.append(
            stage_operator(
                pipeline, "append", commands.append_argv(pipeline.name, DATE, OWNER), outlets=[corpus_asset(pipeline)]
            )
        )
        chain(*tasks)
    return dag
