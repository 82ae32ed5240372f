"""What a run guarantees: one writer per dataset, outputs never reused or resumed by a run with
other parameters, input or code, configuration errors before any stage runs, one line for
a user's mistake, bounded waits on a silent store, no orphan workers, and nightly days
appended in date order whatever the order of their runs."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import NIGHTLY_DAYS, REPO, write_jsonl
from tamis.dataset import Dataset
from tamis.pipeline import ConfigError, load_pipeline, safe_run_id

TAMIS = [sys.executable, "-m", "tamis.cli"]
WIKI = REPO / "include/sample/web/date=2026-11-20/wikipedia.jsonl"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAMIS_", "AWS_", "AIRFLOW_CONN_"))}
    return {**env, **extra}


def tamis(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*TAMIS, *args], env=env or clean_env(), capture_output=True, text=True, timeout=timeout)


def write_pipeline(tmp_path: Path, stages: dict | list | None = None, **extra) -> Path:
    config = {
        "name": "rel",
        "storage_root": str(tmp_path / "store"),
        "workers": 1,
        "sources": {"web": {"path": str(tmp_path / "web")}},
        "stages": stages or {"ingest": {}, "normalize": {}},
        **extra,
    }
    path = tmp_path / "rel.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def many_shards(root: Path, files: int, docs: int = 200) -> None:
    paragraphs = [
        p for line in WIKI.read_text().splitlines() for p in json.loads(line)["text"].split("\n\n") if len(p) > 200
    ]
    for f in range(files):
        write_jsonl(
            root / f"part{f:03d}.jsonl",
            [{"text": f"{paragraphs[(f * docs + i) % len(paragraphs)]} ({f}.{i})"} for i in range(docs)],
        )


# --- one writer per dataset ---------------------------------------------------------------


def test_a_second_writer_of_a_dataset_gets_a_clear_error_and_touches_nothing(tmp_path):
    from tamis.lease import Lease

    many_shards(tmp_path / "web", files=4, docs=20)
    config = write_pipeline(tmp_path)
    out = tmp_path / "store/runs/same/ingest"
    with Lease(str(out), owner="another-run", shared=False):
        refused = tamis("run", "ingest", "--pipeline", str(config), "--run-id", "same")
        assert refused.returncode == 2 and "tamis: error:" in refused.stderr and "Traceback" not in refused.stderr
        assert "is being written by another run (another-run" in refused.stderr
        assert sorted(p.name for p in out.iterdir()) == ["_lease.json"]
    assert tamis("run", "ingest", "--pipeline", str(config), "--run-id", "same").returncode == 0


def test_two_runs_started_together_never_leave_a_broken_dataset(tmp_path):
    many_shards(tmp_path / "web", files=30, docs=50)
    config = write_pipeline(tmp_path)
    for attempt in range(3):
        runs = [
            subprocess.Popen(
                [*TAMIS, "run", "ingest", "--pipeline", str(config), "--run-id", f"same{attempt}"],
                env=clean_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outcomes = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
        assert sorted(code for code, _ in outcomes)[0] == 0
        for code, err in outcomes:
            assert code == 0 or "is being written by another run" in err, err[-1000:]
        out = tmp_path / f"store/runs/same{attempt}/ingest"
        manifest = Dataset(str(out)).manifest()
        assert len(manifest["parts"]) == 30
        for part in manifest["parts"]:
            assert (out / f"{part['name']}.parquet").stat().st_size == part["bytes"]


def test_the_lease_of_a_dead_writer_is_taken_over_and_a_live_one_is_not(tmp_path):
    from tamis.lease import Lease, LeaseHeld

    url = str(tmp_path / "dataset")
    os.makedirs(url)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"owner": "gone", "host": socket.gethostname(), "pid": int(dead.stdout), "expires_at": time.time() + 3600}
    (tmp_path / "dataset/_lease.json").write_text(json.dumps(record))
    with Lease(url, owner="me", shared=False):
        assert json.loads((tmp_path / "dataset/_lease.json").read_text())["owner"] == "me"
    elsewhere = {
        "owner": "them",
        "host": "another-host",
        "pid": 1,
        "expires_at": time.time() + 3600,
        "expires": "later",
    }
    (tmp_path / "dataset/_lease.json").write_text(json.dumps(elsewhere))
    with pytest.raises(LeaseHeld, match="them, host another-host"):
        Lease(url, owner="me", shared=False).acquire()
    (tmp_path / "dataset/_lease.json").write_text(json.dumps({**elsewhere, "expires_at": time.time() - 1}))
    with Lease(url, owner="me", shared=False):
        pass


def test_tasks_sharing_an_owner_write_one_dataset_together(tmp_path):
    from tamis.lease import Lease

    url = str(tmp_path / "dataset")
    first = Lease(url, owner="corpus_build/run/ingest", shared=True).acquire()
    second = Lease(url, owner="corpus_build/run/ingest", shared=True).acquire()
    second.release()
    first.release()
    assert (tmp_path / "dataset/_lease.json").exists(), "a shared lease is left to expire, not removed by one task"


# --- outputs keyed by what made them ------------------------------------------------------


def test_changed_parameters_never_reuse_or_resume_an_output(tmp_path):
    many_shards(tmp_path / "web", files=3, docs=20)
    config = write_pipeline(tmp_path)
    assert tamis("run", "ingest", "--pipeline", str(config), "--run-id", "r").returncode == 0
    changed = tamis("run", "ingest", "--pipeline", str(config), "--run-id", "r", "--param", "max_doc_bytes=10")
    assert changed.returncode == 2
    assert "params.max_doc_bytes: 10000000 -> 10" in changed.stderr and "--rebuild" in changed.stderr
    rebuilt = tamis(
        "run", "ingest", "--pipeline", str(config), "--run-id", "r", "--param", "max_doc_bytes=10", "--rebuild"
    )
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    manifest = Dataset(str(tmp_path / "store/runs/r/ingest")).manifest()
    assert manifest["params"]["max_doc_bytes"] == 10
    assert manifest["quarantine_reasons"] == {"doc_too_large": 60}


def test_a_new_input_file_makes_a_complete_ingest_stale(tmp_path):
    many_shards(tmp_path / "web", files=2, docs=5)
    config = write_pipeline(tmp_path)
    assert tamis("run", "ingest", "--pipeline", str(config), "--run-id", "r").returncode == 0
    many_shards(tmp_path / "web", files=3, docs=5)
    again = tamis("run", "ingest", "--pipeline", str(config), "--run-id", "r")
    assert again.returncode == 2 and "input.files_sha256" in again.stderr


# --- configuration errors before any stage runs -----------------------------------------


@pytest.mark.parametrize("quoted", [True, False])
def test_an_unset_variable_is_an_error_naming_it(tmp_path, quoted):
    value = '"${TAMIS_NOWHERE}"' if quoted else "${TAMIS_NOWHERE}"
    path = tmp_path / "p.yaml"
    path.write_text(f"name: p\nstorage_root: {value}\nsources: {{web: {{path: x}}}}\nstages: {{ingest: {{}}}}\n")
    with pytest.raises(ConfigError, match=r"storage_root uses \$\{TAMIS_NOWHERE\}, which is not set"):
        load_pipeline(str(path))


def test_a_key_given_twice_is_an_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nsources: {web: {path: x}}\nstages:\n  ingest: {}\n  ingest: {max_doc_bytes: 5}\n")
    with pytest.raises(ConfigError, match="key 'ingest' is given twice"):
        load_pipeline(str(path))


def test_a_misspelt_section_is_an_error(tmp_path):
    path = write_pipeline(tmp_path, nightley={"schedule": "@daily"})
    with pytest.raises(ConfigError, match="nightley"):
        load_pipeline(str(path))


TOKENIZER = str(REPO / "include/sample/tokenizer.json")


@pytest.mark.parametrize(
    "stages, gates, message",
    [
        (
            {"ingest": {}, "tokenize": {"tokenizer": TOKENIZER}, "mix": {"weights": {"web": 0.5, "books": 0.5}}},
            None,
            "mix weights name sources the pipeline does not define: ['books']",
        ),
        ({"ingest": {}, "tokenize": {"tokenizer": "./no/such/tokenizer.json"}}, None, "no/such/tokenizer.json"),
        (
            {"ingest": {}, "normalize": {}},
            {"normalize": {"expectations": [{"expect_column_values_to_be_purple": {"column": "text"}}]}},
            "unknown expectations ['expect_column_values_to_be_purple']",
        ),
    ],
)
def test_config_errors_are_found_before_any_stage_runs(tmp_path, stages, gates, message):
    many_shards(tmp_path / "web", files=1, docs=3)
    config = write_pipeline(tmp_path, stages, **({"gates": gates} if gates else {}))
    for command in (["check", str(config)], ["build", "--pipeline", str(config), "--run-id", "r"]):
        done = tamis(*command)
        assert done.returncode == 2, command
        assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "store/runs").exists(), "no stage ran"


def test_a_pipeline_without_gates_uses_each_stage_s_own_default_gate(tmp_path):
    """pack's output has no text column: the default gate of pack must not ask for one."""
    many_shards(tmp_path / "web", files=2, docs=30)
    config = write_pipeline(
        tmp_path, {"ingest": {}, "tokenize": {"tokenizer": TOKENIZER}, "pack": {"tokenizer": TOKENIZER, "seq_len": 256}}
    )
    done = tamis("build", "--pipeline", str(config), "--run-id", "r")
    assert done.returncode == 0, done.stderr[-3000:]
    result = Dataset(str(tmp_path / "store/runs/r/pack")).gate_result()
    assert result["success"] and result["evaluated"] >= 5


# --- one line for a user's mistake --------------------------------------------------------


def test_user_mistakes_are_one_line_not_a_traceback(tmp_path):
    many_shards(tmp_path / "web", files=1, docs=3)
    config = write_pipeline(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    filed = tmp_path / "filed.yaml"
    filed.write_text(config.read_text().replace(str(tmp_path / "store"), str(tmp_path / "a-file")))
    cases = [
        (TAMIS + ["run", "nosuchstage", "--pipeline", str(config)], "has no stage 'nosuchstage'"),
        (TAMIS + ["run", "ingest", "--pipeline", str(filed)], "a-file"),
        (TAMIS + ["summary", "--pipeline", str(config), "--run-id", "never"], None),
        (
            [
                sys.executable,
                "-m",
                "tamis.tokenizer",
                str(tmp_path / "web/part000.jsonl"),
                str(tmp_path / "t.json"),
                "--vocab-size",
                "0",
            ],
            "vocab_size 0",
        ),
    ]
    for argv, message in cases:
        done = subprocess.run(argv, env=clean_env(), capture_output=True, text=True, timeout=300)
        assert "Traceback" not in done.stderr, argv
        if message is not None:
            assert done.returncode == 2 and "tamis: error:" in done.stderr and message in done.stderr, (
                argv,
                done.stderr[-500:],
            )


def test_wrong_s3_credentials_are_one_line_for_validate_and_summary(moto_s3, tmp_path):
    env = clean_env(
        TAMIS_DATA_ROOT=f"s3://{moto_s3['bucket']}/wrong",
        TAMIS_S3_ENDPOINT_URL=moto_s3["endpoint"],
        AWS_ACCESS_KEY_ID=moto_s3["key"],
        AWS_SECRET_ACCESS_KEY="not-the-secret",
        AWS_DEFAULT_REGION="us-east-1",
    )
    for command in (["validate", "ingest", "--run-id", "r"], ["summary", "--run-id", "r"]):
        done = tamis(*command, env=env)
        assert done.returncode == 2 and "tamis: error:" in done.stderr and "Traceback" not in done.stderr, command


def test_an_s3_endpoint_that_never_answers_fails_the_stage_in_bounded_time(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = []
    stop = threading.Event()

    def swallow():  # accepts every connection and never answers
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    threading.Thread(target=swallow, daemon=True).start()
    many_shards(tmp_path / "web", files=1, docs=3)
    config = write_pipeline(tmp_path, storage_root="s3://silent/prefix")
    env = clean_env(
        TAMIS_S3_ENDPOINT_URL=f"http://127.0.0.1:{server.getsockname()[1]}",
        AWS_ACCESS_KEY_ID="k",
        AWS_SECRET_ACCESS_KEY="s",
        AWS_DEFAULT_REGION="us-east-1",
        TAMIS_S3_READ_TIMEOUT_S="2",
    )
    started = time.time()
    done = tamis("run", "ingest", "--pipeline", str(config), env=env, timeout=120)
    elapsed = time.time() - started
    stop.set()
    server.close()
    assert accepted, "the stage never reached the endpoint"
    assert done.returncode == 2 and "tamis: error:" in done.stderr and "silent" in done.stderr
    assert elapsed < 60, f"waited {elapsed:.0f}s on a silent endpoint"


# --- no orphan workers --------------------------------------------------------------------


def test_pool_workers_die_with_their_parent(tmp_path):
    many_shards(tmp_path / "web", files=60, docs=150)
    config = write_pipeline(tmp_path, workers=2)
    assert tamis("run", "ingest", "--pipeline", str(config), "--run-id", "r").returncode == 0
    out = tmp_path / "store/runs/r/normalize"
    parent = subprocess.Popen(
        [*TAMIS, "run", "normalize", "--pipeline", str(config), "--run-id", "r", "--workers", "2"],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while len(list((out / "_commits").glob("*.json")) if (out / "_commits").exists() else []) < 3:
        assert time.time() < deadline and parent.poll() is None
        time.sleep(0.02)
    family = psutil.Process(parent.pid).children(recursive=True)
    assert len(family) >= 2, "the stage did not start its workers"
    os.kill(parent.pid, signal.SIGKILL)  # the main process only
    parent.wait()
    gone, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"workers outlived their parent: {[p.pid for p in alive]}"
    committed = len(list((out / "_commits").glob("*.json")))
    time.sleep(2)
    assert len(list((out / "_commits").glob("*.json"))) == committed, "shards were committed after the parent died"


# --- run ids ------------------------------------------------------------------------------


def test_run_ids_map_to_distinct_safe_folders():
    ids = [
        "manual__2026-11-23T08:20:10+00:00",
        "manual__2026-11-23T08_20_10_00_00",
        "manual__2026-11-23T08+20+10+00+00",
        "try1",
        "a b",
        "a_b",
    ]
    folders = [safe_run_id(i) for i in ids]
    assert len(set(folders)) == len(ids)
    assert safe_run_id("try1") == "try1"
    assert all("/" not in f and not f.startswith(".") for f in folders)
    for bad in (".", "..", "", " "):
        with pytest.raises(ConfigError):
            safe_run_id(bad)


# --- nightly days in order ----------------------------------------------------------------

DAYS = NIGHTLY_DAYS


@pytest.mark.slow
def test_three_nightly_days_run_in_reverse_and_at_once_give_the_in_order_corpus(tmp_path, local_nightly):
    racing_env = clean_env(TAMIS_DATA_ROOT=str(tmp_path / "racing"), TAMIS_WORKERS="1")
    racers = []
    for day in reversed(DAYS):  # the last day first, all at once
        racers.append(
            subprocess.Popen(
                [*TAMIS, "nightly", "run", "--date", day, "--run-id", f"n-{day}", "--wait-s", "900"],
                env=racing_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        time.sleep(0.5)
    for racer in racers:
        _, err = racer.communicate(timeout=1800)
        assert racer.returncode == 0, err[-3000:]
    texts, ids = [], []
    for day in DAYS:
        ordered = Dataset(str(local_nightly / f"date={day}"))
        racing = Dataset(str(tmp_path / f"racing/corpus/default/date={day}"))
        assert [p["sha256"] for p in racing.manifest()["parts"]] == [
            p["sha256"] for p in ordered.manifest()["parts"]
        ], day
        table = racing.read(columns=["id", "text"])
        ids += table.column("id").to_pylist()
        texts += table.column("text").to_pylist()
    assert len(ids) == len(set(ids)) and len(texts) == len(set(texts))

    # A day run again once later days are appended compares with the days before it only,
    # as its first run did: its dedup outputs are still its own, and the partition is the same.
    middle = tmp_path / f"racing/corpus/default/date={DAYS[1]}"
    before = [p["sha256"] for p in Dataset(str(middle)).manifest()["parts"]]
    again = subprocess.run(
        [*TAMIS, "nightly", "run", "--date", DAYS[1], "--run-id", f"n-{DAYS[1]}"],
        env=racing_env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("exact_dedup", "near_dedup"):
        assert re.search(rf"{stage}: \S+ is already complete", again.stderr), again.stderr[-3000:]
    assert [p["sha256"] for p in Dataset(str(middle)).manifest()["parts"]] == before


def test_leases_on_s3_are_conditional_writes_with_the_same_rules(moto_s3, monkeypatch):
    from tamis.lease import Lease, LeaseHeld

    for name, value in (
        ("TAMIS_S3_ENDPOINT_URL", moto_s3["endpoint"]),
        ("AWS_ACCESS_KEY_ID", moto_s3["key"]),
        ("AWS_SECRET_ACCESS_KEY", moto_s3["secret"]),
    ):
        monkeypatch.setenv(name, value)
    url = f"s3://{moto_s3['bucket']}/leases/dataset"
    first = Lease(url, owner="run-a/ingest", shared=True).acquire()
    second = Lease(url, owner="run-a/ingest", shared=True).acquire()  # a mapped task of the same run
    with pytest.raises(LeaseHeld, match="run-a/ingest"):
        Lease(url, owner="run-b/ingest", shared=False).acquire()
    second.release()
    first.release()
    moto_s3["client"].put_object(
        Bucket=moto_s3["bucket"],
        Key="leases/dataset/_lease.json",
        Body=json.dumps({"owner": "run-a/ingest", "host": "h", "pid": 1, "expires_at": 0}),
    )
    with Lease(url, owner="run-b/ingest", shared=False):  # an expired lease is taken over
        pass
