"""Airflow as in production: PostgreSQL as the metadata database, the scheduler with the
LocalExecutor, the dag-processor and the api-server (the tasks' execution API), all real
processes. A corpus_build run, a 3-day nightly_ingest backfill, and a re-run day."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
from servers import request, token, wait_for

from conftest import REPO, airflow_env, free_port
from tamis.corpus import partitions
from tamis.dataset import Dataset

pytestmark = pytest.mark.slow

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DAYS = ["2026-11-20", "2026-11-21", "2026-11-22"]


def _as_postgres(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI runs as root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres():
    bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
    root = tempfile.mkdtemp(prefix="tamis-pg-")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = os.path.join(root, "data"), free_port()
    subprocess.run(
        _as_postgres([f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres"]), check=True, capture_output=True
    )
    subprocess.run(
        _as_postgres(
            [
                f"{bindir}/pg_ctl",
                "-D",
                data,
                "-l",
                os.path.join(root, "log"),
                "-w",
                "start",
                "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
            ]
        ),
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [f"{bindir}/psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "CREATE DATABASE airflow"],
        check=True,
        capture_output=True,
    )
    yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/airflow"
    subprocess.run(_as_postgres([f"{bindir}/pg_ctl", "-D", data, "-m", "fast", "stop"]), capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def airflow(postgres, tmp_path_factory):
    home = tmp_path_factory.mktemp("pg_airflow")
    data = tmp_path_factory.mktemp("pg_data")
    port = free_port()
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"observer": "observer-password"}))
    env = {
        **os.environ,
        **airflow_env(home, data),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "observer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        # The DAG files do not change during the test: parsed once, not every 30 s, they
        # leave the two cores to the tasks.
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
        "TAMIS_WORKERS": "1",
        # The sample's days only: catch-up must not depend on today's date.
        "TAMIS_NIGHTLY_END_DATE": DAYS[-1],
    }
    migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    services = [
        subprocess.Popen(
            [AIRFLOW, *command], env=env, stdout=(logs / f"{command[0]}.out").open("w"), stderr=subprocess.STDOUT
        )
        for command in (["api-server", "--port", str(port), "--host", "127.0.0.1"], ["scheduler"], ["dag-processor"])
    ]

    def cli(*args: str) -> str:
        done = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise CliFailed(f"airflow {' '.join(args)}: {done.stderr[-2000:]}")
        return done.stdout

    # The runs are watched through the api-server's REST API, as a client would: a request
    # costs the tasks nothing, where each `airflow` command is a new Python loading Airflow.
    base = f"http://127.0.0.1:{port}"
    wait_for(f"{base}/api/v2/monitor/health", services[0], logs / "api-server.out")
    bearer = token(base, "observer", "observer-password")

    def api(path: str):
        status, body = request(f"{base}/api/v2/{path}", bearer)
        return status, body

    deadline = time.time() + 180
    while api("dags/nightly_ingest")[0] != 200:
        assert time.time() < deadline, "the dag-processor did not parse the DAGs"
        time.sleep(1)
    yield {"cli": cli, "api": api, "data": data, "logs": logs}
    for service in services:
        service.terminate()
    for service in services:
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()


class CliFailed(RuntimeError):
    pass


def create_backfill(cli, *args: str, timeout: float = 120) -> None:
    """Airflow refuses a new backfill of a DAG until the scheduler has marked its previous
    backfill complete, a few heartbeats after the last run ends."""
    deadline = time.time() + timeout
    while True:
        try:
            cli("backfill", "create", "--dag-id", "nightly_ingest", "--max-active-runs", "1", *args)
            return
        except CliFailed as exc:
            if "already" not in str(exc).lower() or time.time() > deadline:
                raise
            time.sleep(5)


def wait_for_runs(api, dag_id: str, count: int, timeout: float = 600, until=lambda runs: True) -> list[dict]:
    """Wait until at least ``count`` runs exist, all finished, and ``until(runs)`` holds."""
    deadline = time.time() + timeout
    runs: list[dict] = []
    while time.time() < deadline:
        status, body = api(f"dags/{dag_id}/dagRuns?limit=100")
        assert status == 200, body
        runs = body["dag_runs"]
        finished = [r for r in runs if r["state"] in ("success", "failed")]
        if len(finished) >= count and len(finished) == len(runs) and until(runs):
            return runs
        time.sleep(2)
    raise AssertionError(f"{dag_id}: runs did not finish in {timeout}s: {runs}")


def test_corpus_build_completes_under_the_scheduler_on_postgres(airflow):
    cli = airflow["cli"]
    cli("dags", "unpause", "corpus_build")
    cli("dags", "trigger", "corpus_build")
    (run,) = wait_for_runs(airflow["api"], "corpus_build", 1)
    assert run["state"] == "success", (airflow["logs"] / "scheduler.out").read_text()[-3000:]


def test_a_three_day_backfill_builds_the_corpus_and_a_rerun_day_changes_nothing(airflow):
    cli, corpus = airflow["cli"], str(airflow["data"] / "corpus" / "default")
    # The backfill's runs exist before the DAG is unpaused, so catchup finds those days taken.
    create_backfill(cli, "--from-date", DAYS[0], "--to-date", DAYS[-1])
    cli("dags", "unpause", "nightly_ingest")
    runs = wait_for_runs(airflow["api"], "nightly_ingest", 3)
    assert sorted(r["logical_date"][:10] for r in runs) == DAYS
    assert {r["state"] for r in runs} == {"success"}

    assert sorted(partitions(corpus)) == DAYS
    ids = [i for url in partitions(corpus).values() for i in Dataset(url).read(columns=["id"]).column("id").to_pylist()]
    # The pages crawled again on the 22nd (one of them edited since) are never added twice:
    # those the corpus took on the 20th keep their first record, the others failed a filter.
    crawl = REPO / "include/sample/web/date=2026-11-22/crawl.jsonl"
    recrawled = [json.loads(line)["id"] for line in crawl.read_text().splitlines() if '"recrawl-' in line]
    assert recrawled
    assert not {f"web/{i}" for i in recrawled} & set(ids)
    assert len({f"web/{i.removeprefix('recrawl-')}" for i in recrawled} & set(ids)) >= 3
    texts = [
        t for url in partitions(corpus).values() for t in Dataset(url).read(columns=["text"]).column("text").to_pylist()
    ]
    assert len(ids) == len(set(ids)) and len(texts) == len(set(texts))

    before = Dataset(partitions(corpus)["2026-11-21"]).manifest()["parts"]
    appended_at = (Path(partitions(corpus)["2026-11-21"]) / "_manifest.json").stat().st_mtime
    first_end = next(r["end_date"] for r in runs if r["logical_date"].startswith(DAYS[1]))
    create_backfill(cli, "--from-date", DAYS[1], "--to-date", DAYS[1], "--reprocess-behavior", "completed")
    # The reprocessed run is the same run cleared: it is done when it ends again, later.
    wait_for_runs(
        airflow["api"],
        "nightly_ingest",
        3,
        until=lambda rs: any(
            r["logical_date"].startswith(DAYS[1]) and r["end_date"] and r["end_date"] > first_end for r in rs
        ),
    )
    after = Dataset(partitions(corpus)["2026-11-21"]).manifest()
    assert (Path(partitions(corpus)["2026-11-21"]) / "_manifest.json").stat().st_mtime > appended_at, (
        "the day was not re-run"
    )
    assert [p["sha256"] for p in after["parts"]] == [p["sha256"] for p in before]
    all_ids = pc.count_distinct(Dataset(partitions(corpus)["2026-11-21"]).read(columns=["id"]).column("id")).as_py()
    assert all_ids == after["counts"]["kept"]
