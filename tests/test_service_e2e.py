"""Datasets as a service, end to end through Airflow on this machine.

One pipeline of team ``data`` reads a Git repository (over HTTP, Basic auth), files on an
HTTP server (a bearer token) and an S3 prefix (moto, its own keys), with credentials that
exist only as Airflow connections in Airflow's database: ``airflow dags test`` runs the
corpus_build DAG built for that pipeline (every stage and gate as tasks), then its
dataset_release DAG (prepare, repro, push, manifest, preheat). The Airflow api-server then serves the catalog
plugin to a reader of team ``data`` and one of team ``other``; a second, public release of
another pipeline is readable by both. Finally a store object is damaged: preheat refuses the
release and no ready event is recorded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import yaml
from servers import FileServer, make_repository, review_files, wiki_rows
from servers import request as _request
from servers import token as _token
from servers import wait_for as _wait_for

from conftest import REPO, airflow_env, free_port, write_jsonl
from tamis.dataset import Dataset
from tamis.export import TokenBinary

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
AIRFLOW = str(BIN / "airflow")
TOKENIZER = REPO / "include/sample/tokenizer.json"
USERS = {"alice": ("viewer:data", "alice-pw"), "bob": ("viewer:other", "bob-pw")}
DAGS = """
import os

from tamis_airflow.corpus import build_corpus_dag
from tamis_airflow.release import build_release_dag

build = build_corpus_dag(os.environ["SVC_PIPELINE"], dag_id="svc_build")
release = build_release_dag(os.environ["SVC_PIPELINE"], dag_id="svc_release")
"""


def _airflow(env: dict, *args: str, timeout: int = 600) -> str:
    result = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"airflow {' '.join(args[:3])} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result.stdout + result.stderr


def _dag_test(env: dict, dag_id: str) -> tuple[str, str, str]:
    result = subprocess.run([AIRFLOW, "dags", "test", dag_id], env=env, capture_output=True, text=True, timeout=900)
    log = result.stdout + result.stderr
    finished = re.findall(rf"DagRun Finished: dag_id={dag_id}.*?run_id=([^,]+),.*?state=(\w+)", log)
    assert finished, log[-6000:]
    return finished[-1][0], finished[-1][1], log


def _ready_events(env: dict) -> int:
    """Asset events Airflow recorded for the svc pipeline's ready asset."""
    code = (
        "from sqlalchemy import select, func\n"
        "from airflow.models.asset import AssetEvent, AssetModel\n"
        "from airflow.utils.session import create_session\n"
        "with create_session() as s:\n"
        "    print(s.scalar(select(func.count()).select_from(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)"
        ".where(AssetModel.uri == 'tamis://release-ready/svc')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return int(result.stdout.strip().splitlines()[-1])


def _clean_environment() -> dict[str, str]:
    """No credential reaches a task except through Airflow's connections."""
    drop = (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
        "TAMIS_S3_ENDPOINT_URL",
        "AWS_SESSION_TOKEN",
    )
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__"))}


@pytest.fixture(scope="module")
def service(tmp_path_factory, moto_s3):
    root = tmp_path_factory.mktemp("service")
    repository = make_repository(root / "git")
    git_server = FileServer(root / "git", login="reader", password="s3cr3t/pw")
    (root / "files").mkdir()
    checksums = review_files(root / "files")
    file_server = FileServer(root / "files", token="tok-123")
    speeches = write_jsonl(root / "speeches.jsonl", wiki_rows(4, start=20))
    moto_s3["client"].put_object(
        Bucket=moto_s3["bucket"], Key="teams/data/speeches/date=2026-11-20/part.jsonl", Body=speeches.read_bytes()
    )
    pipeline_path = root / "svc.yaml"
    pipeline_path.write_text(
        yaml.safe_dump(
            {
                "name": "svc",
                "team": "data",
                "storage_root": str(root / "store"),
                "workers": 1,
                "sources": {
                    "wiki": {
                        "kind": "git",
                        "url": f"{git_server.url}/repo.git",
                        "revision": "v1",
                        "subdir": "corpus",
                        "connection": "src_git",
                        "id_field": "id",
                    },
                    "reviews": {
                        "kind": "http",
                        "url": f"{file_server.url}/",
                        "checksums": checksums,
                        "connection": "src_http",
                        "id_field": "id",
                    },
                    "lake": {
                        "path": f"s3://{moto_s3['bucket']}/teams/data/speeches",
                        "connection": "src_s3",
                        "id_field": "id",
                    },
                },
                "stages": {
                    "ingest": {},
                    "normalize": {},
                    "tokenize": {"tokenizer": str(TOKENIZER)},
                    "pack": {"tokenizer": str(TOKENIZER), "seq_len": 256},
                    "index": {"documents": "tokenize"},
                },
                "orchestration": {"retries": 0},
                "release": {
                    "workspace": str(root / "workspace"),
                    "remote": str(root / "store/releases/svc"),
                    "hot": str(root / "hot"),
                },
            },
            sort_keys=False,
        )
    )
    public_sources = root / "public_src/date=2026-11-20"
    public_sources.mkdir(parents=True)
    shutil.copyfile(REPO / "include/sample/udhr/date=2026-11-20/eng.txt", public_sources / "eng.txt")
    public_path = root / "udhr.yaml"
    public_path.write_text(
        yaml.safe_dump(
            {
                "name": "udhr",
                "team": "other",
                "storage_root": str(root / "store_public"),
                "workers": 1,
                "sources": {"udhr": {"path": str(root / "public_src"), "format": "text"}},
                "stages": {"ingest": {}},
                "release": {"public": True, "hot": str(root / "hot")},
            },
            sort_keys=False,
        )
    )

    home = root / "airflow"
    dags = root / "dags"
    dags.mkdir()
    (dags / "svc_dags.py").write_text(DAGS)
    env = {
        **_clean_environment(),
        **airflow_env(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "SVC_PIPELINE": str(pipeline_path),
        "TAMIS_SOURCE_CACHE": str(root / "source-cache"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    public = subprocess.run(
        [str(BIN / "tamis"), "release", "all", "--pipeline", str(public_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert public.returncode == 0, public.stderr[-3000:]
    _airflow(env, "db", "migrate")
    _airflow(
        env,
        "connections",
        "add",
        "src_git",
        "--conn-type",
        "http",
        "--conn-login",
        "reader",
        "--conn-password",
        "s3cr3t/pw",
    )
    _airflow(env, "connections", "add", "src_http", "--conn-type", "http", "--conn-password", "tok-123")
    _airflow(
        env,
        "connections",
        "add",
        "src_s3",
        "--conn-type",
        "aws",
        "--conn-login",
        moto_s3["key"],
        "--conn-password",
        moto_s3["secret"],
        "--conn-extra",
        json.dumps({"endpoint_url": moto_s3["endpoint"], "region_name": "us-east-1"}),
    )
    _airflow(env, "dags", "reserialize")
    build_run, build_state, build_log = _dag_test(env, "svc_build")
    release_run, release_state, release_log = _dag_test(env, "svc_release")
    yield {
        "root": root,
        "env": env,
        "repository": repository,
        "checksums": checksums,
        "git_server": git_server,
        "file_server": file_server,
        "pipeline_path": pipeline_path,
        "public_path": public_path,
        "build": (build_run, build_state, build_log),
        "release": (release_run, release_state, release_log),
        "moto": moto_s3,
    }
    git_server.close()
    file_server.close()


def svc_pipeline(service):
    from tamis.pipeline import load_pipeline

    return load_pipeline(str(service["pipeline_path"]))


def released(service) -> dict:
    return json.loads((service["root"] / "workspace/release.json").read_text())


def test_one_run_ingests_git_http_and_s3_with_credentials_from_connections(service):
    run_id, state, log = service["build"]
    assert state == "success", log[-6000:]
    pipeline = svc_pipeline(service)
    manifest = Dataset(pipeline.stage_url(run_id, "ingest")).manifest()
    inputs = [p["input"] for p in manifest["parts"]]
    commit = service["repository"]["v1"]
    assert f"git+{service['git_server'].url}/repo.git@{commit}#corpus/date=2026-11-20/wiki.jsonl" in inputs
    assert {
        f"{service['file_server'].url}/{path}#sha256={digest}" for path, digest in service["checksums"].items()
    } <= set(inputs)
    assert f"s3://{service['moto']['bucket']}/teams/data/speeches/date=2026-11-20/part.jsonl" in inputs
    sources = Dataset(manifest["output"]).read(columns=["source"]).column("source").to_pylist()
    assert {s: sources.count(s) for s in set(sources)} == {"wiki": 6, "reviews": 10, "lake": 4}
    # Each server saw authorized requests only once the connection was in place, and no secret was logged.
    assert service["git_server"].requests and all(ok for _, _, ok in service["git_server"].requests)
    assert service["file_server"].requests and all(ok for _, _, ok in service["file_server"].requests)
    assert "s3cr3t/pw" not in log and "tok-123" not in log


def test_the_release_dag_versions_and_preheats_with_the_commit_in_the_lineage(service):
    run_id, state, log = service["release"]
    assert state == "success", log[-6000:]
    manifest = released(service)
    assert manifest["team"] == "data" and manifest["public"] is False
    wiki = manifest["sources"]["wiki"]
    assert wiki["kind"] == "git" and wiki["lineage"]["commit"] == service["repository"]["v1"]
    assert wiki["lineage"]["revision"] == "v1"
    assert manifest["sources"]["reviews"]["lineage"]["rejected"] == []
    assert manifest["contents"]["datasets"] == ["index", "tokenize"]
    hot = service["root"] / "hot" / manifest["version"]
    ready = json.loads((hot / "_READY.json").read_text())
    assert sorted(f["path"] for f in ready["files"]) == sorted(f["path"] for f in manifest["contents"]["files"])
    for entry in ready["files"]:
        assert __import__("hashlib").sha256((hot / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
    assert _ready_events(service["env"]) == 1
    pointer = json.loads((service["root"] / "hot/_latest/svc.json").read_text())
    assert pointer["version"] == manifest["version"]


@pytest.fixture(scope="module")
def catalog_site(service):
    root = service["root"]
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps({name: pw for name, (_, pw) in USERS.items()}))
    port = free_port()
    env = {
        **service["env"],
        "AIRFLOW__CORE__MULTI_TEAM": "True",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{n}:{r}" for n, (r, _) in USERS.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(
            [
                {
                    "name": "svc",
                    "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                    "kwargs": {"path": str(root / "dags")},
                    "team_name": "data",
                }
            ]
        ),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "TAMIS_CATALOG_PIPELINES": os.pathsep.join([str(service["pipeline_path"]), str(service["public_path"])]),
    }
    _airflow(env, "teams", "create", "data")
    _airflow(env, "teams", "create", "other")
    log = root / "api-server.log"
    server = subprocess.Popen(
        [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(f"{base}/api/v2/monitor/health", server, log)
        yield {"base": base, "tokens": {name: _token(base, name, pw) for name, (_, pw) in USERS.items()}, "log": log}
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers: the group this fixture started
        server.wait(30)


def api(site, user: str, path: str):
    return _request(site["base"] + "/tamis-catalog" + path, site["tokens"][user])


def test_the_catalog_lists_the_release_to_its_team_with_how_it_was_made(service, catalog_site):
    manifest = released(service)
    status, body = api(catalog_site, "alice", "/api/releases")
    assert status == 200, body
    versions = {r["version"]: r for r in body["releases"]}
    public = next(v for v in versions if v.startswith("udhr-"))
    entry = versions[manifest["version"]]
    assert entry["team"] == "data" and entry["ready"] is True
    assert entry["dvc"]["revision"] == manifest["dvc"]["lock_sha256"]
    assert entry["documents"] == manifest["stages"][-1]["counts"]["kept"]
    assert entry["tokens"]["pack.tokens"] == manifest["stages"][3]["metrics"]["pack.tokens"]
    assert entry["bytes"] == sum(f["bytes"] for f in manifest["contents"]["files"])
    status, detail = api(catalog_site, "alice", f"/api/releases/{manifest['version']}")
    assert status == 200
    assert detail["lineage"]["sources"]["wiki"]["commit"] == service["repository"]["v1"]
    assert [s["stage"] for s in detail["stages"]] == ["ingest", "normalize", "tokenize", "pack", "index"]
    assert detail["gates"]["ingest"]["success"] is True and detail["gates"]["index"]["evaluated"] > 0
    assert detail["pipeline"]["config"]["sources"]["wiki"]["revision"] == service["repository"]["v1"]
    assert versions[public]["public"] is True


def test_another_team_does_not_see_the_release_but_sees_the_public_one(service, catalog_site):
    version = released(service)["version"]
    status, body = api(catalog_site, "bob", "/api/releases")
    assert status == 200
    listed = [r["version"] for r in body["releases"]]
    assert version not in listed and any(v.startswith("udhr-") for v in listed)
    for path in ("", "/records", "/sample", "/pipeline.yaml"):
        status, _ = api(catalog_site, "bob", f"/api/releases/{version}{path}")
        assert status == 404, path
    status, page = _request(catalog_site["base"] + "/tamis-catalog/", catalog_site["tokens"]["bob"], cookie=True)
    assert status == 200 and version not in page
    status, _ = _request(catalog_site["base"] + "/tamis-catalog/api/releases", None)
    assert status == 401


def test_the_page_previews_records_samples_through_the_index_and_shows_loading_code(service, catalog_site):
    manifest = released(service)
    version = manifest["version"]
    status, page = _request(f"{catalog_site['base']}/tamis-catalog/", catalog_site["tokens"]["alice"], cookie=True)
    assert status == 200 and f'data-version="{version}"' in page
    href = f"/tamis-catalog/releases/{urllib.parse.quote(version, safe='')}"
    status, page = _request(f"{catalog_site['base']}{href}?source=wiki", catalog_site["tokens"]["alice"], cookie=True)
    assert status == 200, page
    assert re.search(r'<table id="preview">.*?<tr class="record">', page, re.S)
    sample = re.search(r'<table id="sample">(.*?)</table>', page, re.S).group(1)
    assert re.findall(r'<td class="source">([^<]*)</td>', sample) and set(
        re.findall(r'<td class="source">([^<]*)</td>', sample)
    ) == {"wiki"}
    for kind in ("datasets", "pytorch", "megatron", "numpy"):
        assert f'data-kind="{kind}"' in page
    status, found = api(catalog_site, "alice", f"/api/releases/{version}/sample?source=reviews&limit=50")
    assert status == 200 and len(found["rows"]) == 10 and {r["source"] for r in found["rows"]} == {"reviews"}
    assert found["where"] == "\"source\" = 'reviews'"
    status, refused = api(catalog_site, "alice", f"/api/releases/{version}/sample?source=x%27%20OR%201%3D1--")
    assert status == 200 and refused["rows"] == []
    status, bad = api(catalog_site, "alice", f"/api/releases/{version}/sample?nonexistent=1")
    assert status == 400 and "no column" in bad["detail"]


def test_the_loading_code_shown_loads_the_release(service, catalog_site, tmp_path, monkeypatch):
    manifest = released(service)
    status, detail = api(catalog_site, "alice", f"/api/releases/{manifest['version']}")
    code = detail["loading"]
    hot = service["root"] / "hot" / manifest["version"]
    namespace: dict = {}
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    exec(code["datasets"], namespace)
    assert len(namespace["records"]) == manifest["stages"][2]["counts"]["kept"]
    exec(code["pytorch"], namespace)
    assert (
        namespace["dataset"].release["read_from"] == "hot"
        and len(namespace["dataset"]) == manifest["stages"][3]["counts"]["kept"]
    )
    exec(code["numpy"], namespace)
    binary = TokenBinary(str(hot / "data/index/_index/tokens"))
    assert np.array_equal(np.asarray(namespace["first"]), binary[0])
    assert code["megatron"].count(str(hot / "data/index/_index/tokens")) == 1


def test_a_release_clones_into_a_pipeline_that_loads(service, catalog_site, tmp_path):
    from tamis.pipeline import load_pipeline

    version = released(service)["version"]
    status, text = api(catalog_site, "alice", f"/api/releases/{version}/pipeline.yaml?name=svc-next")
    assert status == 200 and isinstance(text, str)
    path = tmp_path / "svc-next.yaml"
    path.write_text(text)
    clone = load_pipeline(str(path))
    original = svc_pipeline(service)
    assert clone.name == "svc-next" and clone.team == "data"
    assert clone.sources["wiki"].revision == service["repository"]["v1"]
    assert clone.sources["reviews"].checksums == original.sources["reviews"].checksums
    for stage in original.stage_names:
        assert clone.stage(stage).params == original.stage(stage).params


def test_preheat_refuses_a_damaged_store_and_no_ready_event_follows(service, catalog_site):
    manifest = released(service)
    hot = service["root"] / "hot" / manifest["version"]
    shutil.rmtree(hot)
    victim = next(f for f in manifest["contents"]["files"] if f["path"].endswith("tokens.bin"))
    obj = service["root"] / "store/releases/svc/files/md5" / victim["md5"][:2] / victim["md5"][2:]
    obj.chmod(0o644)
    data = bytearray(obj.read_bytes())
    data[0] ^= 0xFF
    obj.write_bytes(bytes(data))
    run_id, state, log = _dag_test(service["env"], "svc_release")
    assert state == "failed"
    assert "the release is not made ready" in log
    assert not hot.exists() and not list((service["root"] / "hot/.incoming").iterdir())
    assert _ready_events(service["env"]) == 1
    status, listed = api(catalog_site, "alice", "/api/releases")
    assert next(r for r in listed["releases"] if r["version"] == manifest["version"])["ready"] is False
