"""Sources beyond local folders: a Git repository at a revision, HTTP(S) files with their
checksums and an S3 prefix with credentials of its own, each read through a real server on
loopback, with credentials from the Airflow connection the pipeline names."""

from __future__ import annotations

import json

import pytest
from servers import FileServer, make_repository, review_files, wiki_rows

from conftest import write_jsonl
from tamis.cli import run_one
from tamis.dataset import Dataset
from tamis.pipeline import ConfigError
from tamis.sources import connections
from tamis.sources.connections import MissingConnection


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TAMIS_SOURCE_CACHE", str(tmp_path / "source-cache"))
    for name in [n for n in __import__("os").environ if n.startswith("AIRFLOW_CONN_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    return make_repository(tmp_path_factory.mktemp("git"))


@pytest.fixture(scope="module")
def git_server(repository):
    server = FileServer(repository["bare"].parent, login="reader", password="s3cr3t/pw")
    yield server
    server.close()


@pytest.fixture(scope="module")
def http_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("http")
    checksums = review_files(root)
    server = FileServer(root, token="tok-123")
    yield {"server": server, "checksums": checksums, "root": root}
    server.close()


def ingest(pipeline, run_id="r1", **overrides):
    manifest = run_one(pipeline, "ingest", run_id, overrides=overrides or None)
    counts = manifest["counts"]
    assert counts["in"] == counts["kept"] + counts["dropped"] + counts["quarantined"]
    return manifest, Dataset(manifest["output"])


def quarantined(manifest) -> list[dict]:
    dataset = Dataset(manifest["output"])
    return [row for part in manifest["parts"] for row in _rows(dataset.quarantine_url(part["name"]))]


def _rows(url):
    import pyarrow.parquet as pq

    from tamis import storage

    return pq.read_table(storage.filesystem(url)[1]).to_pylist() if storage.exists(url) else []


def commits(manifest) -> list[str]:
    return [p["input"] for p in manifest["parts"]]


# --- connections ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "http://reader:s3cr3t%2Fpw@git.example.org:8443/base?headers=%7B%22X-Team%22%3A+%22data%22%7D",
        "aws://AKIAEXAMPLE:wJalr%2FEXAMPLEKEY@/?region_name=eu-west-1&endpoint_url=http%3A%2F%2Fminio%3A9000",
        "http://:tok%40en@",
        "https://https%3A%2F%2Ffiles.example.org",
    ],
)
def test_connection_uris_read_as_airflow_reads_them(uri, airflow_home):
    from airflow.sdk import Connection

    theirs = Connection.from_uri(uri, conn_id="my_src")
    ours = connections.parse_uri("my_src", theirs.get_uri())
    assert (ours.conn_type, ours.host, ours.login, ours.password, ours.port, ours.schema) == (
        theirs.conn_type,
        theirs.host or None,
        theirs.login,
        theirs.password,
        theirs.port,
        theirs.schema or None,
    )
    assert ours.extra == theirs.extra_dejson


def test_a_json_connection_and_a_missing_one(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_MY_SRC",
        json.dumps({"conn_type": "http", "login": "a", "password": "b", "extra": {"headers": {"X-Team": "data"}}}),
    )
    conn = connections.get_connection("my_src")
    assert conn.http_headers() == {"X-Team": "data", "Authorization": "Basic YTpi"}
    with pytest.raises(MissingConnection, match="AIRFLOW_CONN_OTHER is not set.*tamis-conn-other"):
        connections.get_connection("other")


# --- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, message",
    [
        ({"kind": "git", "url": "https://reader:pw@example.org/r.git"}, "holds credentials"),
        ({"kind": "git", "url": "https://example.org/r.git", "revision": "--upload-pack=touch"}, "not a branch"),
        ({"kind": "git", "url": "https://example.org/r.git", "path": "corpus"}, "takes no path"),
        ({"kind": "http", "url": "https://example.org/x/"}, "checksums"),
        ({"kind": "http", "url": "https://example.org/x/", "checksums": {"a.jsonl": "abc"}}, "sha256"),
        ({"kind": "http", "url": "https://example.org/x/", "checksums": {"../a.jsonl": "0" * 64}}, "relative path"),
        ({"path": "/data/web", "connection": "nfs"}, "takes no connection"),
        ({"kind": "s3", "path": "s3://lake/web", "connection": "my-s3"}, "letters, digits and '_'"),
    ],
)
def test_source_settings_are_checked_when_the_pipeline_loads(make_pipeline, source, message):
    with pytest.raises(ConfigError, match=message):
        make_pipeline({"web": source})


# --- git ------------------------------------------------------------------------------


def test_a_git_source_at_a_tag_reads_that_commit_and_names_it_in_the_lineage(make_pipeline, repository):
    url = f"file://{repository['bare']}"
    pipeline = make_pipeline(
        {"wiki": {"kind": "git", "url": url, "revision": "v1", "subdir": "corpus", "id_field": "id"}},
        stages={"ingest": {}},
    )
    manifest, dataset = ingest(pipeline)
    assert manifest["counts"] == {"in": 6, "kept": 6, "dropped": 0, "quarantined": 0}
    assert commits(manifest) == [f"git+{url}@{repository['v1']}#corpus/date=2026-11-20/wiki.jsonl"]
    assert sorted(dataset.read(columns=["id"]).column("id").to_pylist()) == sorted(f"wiki/wiki-{i}" for i in range(6))


def test_a_git_branch_follows_its_head_and_a_date_reads_one_partition(make_pipeline, repository):
    url = f"file://{repository['bare']}"
    pipeline = make_pipeline(
        {"wiki": {"kind": "git", "url": url, "revision": "main", "subdir": "corpus", "id_field": "id"}},
        stages={"ingest": {}},
    )
    manifest, _ = ingest(pipeline)
    assert manifest["counts"]["kept"] == 9
    assert {i.split("@")[1].split("#")[0] for i in commits(manifest)} == {repository["main"]}
    day, _ = ingest(pipeline, run_id="day", date="2026-11-21")
    assert day["counts"]["kept"] == 3 and commits(day) == [
        f"git+{url}@{repository['main']}#corpus/date=2026-11-21/wiki.jsonl"
    ]


def test_git_over_http_takes_the_credentials_of_the_named_connection(
    make_pipeline, repository, git_server, monkeypatch
):
    url = f"{git_server.url}/repo.git"
    pipeline = make_pipeline(
        {
            "wiki": {
                "kind": "git",
                "url": url,
                "revision": repository["v1"],
                "subdir": "corpus",
                "connection": "wiki_git",
                "id_field": "id",
            }
        },
        stages={"ingest": {}},
    )
    with pytest.raises(MissingConnection, match="AIRFLOW_CONN_WIKI_GIT"):
        ingest(pipeline)
    monkeypatch.setenv("AIRFLOW_CONN_WIKI_GIT", "http://reader:wrong@")
    with pytest.raises(OSError, match="git fetch of .* failed"):
        ingest(pipeline, run_id="wrong")
    monkeypatch.setenv("AIRFLOW_CONN_WIKI_GIT", "http://reader:s3cr3t%2Fpw@")
    manifest, _ = ingest(pipeline, run_id="right")
    assert manifest["counts"]["kept"] == 6
    assert all(ok for _, path, ok in git_server.requests[-5:])
    assert "s3cr3t" not in json.dumps(manifest)


# --- http -----------------------------------------------------------------------------


def test_http_files_are_verified_and_a_wrong_checksum_is_quarantined(make_pipeline, http_files, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_REVIEWS", json.dumps({"conn_type": "http", "password": "tok-123"}))
    checksums = dict(http_files["checksums"])
    good, bad = sorted(checksums)
    checksums[bad] = "0" * 64
    checksums["date=2026-11-20/gone.jsonl"] = "1" * 64
    base = f"{http_files['server'].url}/"
    pipeline = make_pipeline(
        {"reviews": {"kind": "http", "url": base, "checksums": checksums, "connection": "reviews", "id_field": "id"}},
        stages={"ingest": {}},
    )
    manifest, dataset = ingest(pipeline)
    assert manifest["counts"] == {"in": 8, "kept": 6, "dropped": 0, "quarantined": 2}
    assert manifest["quarantine_reasons"] == {"checksum_mismatch": 1, "missing_file": 1}
    rows = {r["reason"]: r for r in quarantined(manifest)}
    assert rows["checksum_mismatch"]["source_file"] == f"{base}{bad}#sha256={'0' * 64}"
    assert http_files["checksums"][bad] in rows["checksum_mismatch"]["detail"]
    assert "HTTP 404" in rows["missing_file"]["detail"]
    assert f"{base}{good}#sha256={http_files['checksums'][good]}" in commits(manifest)
    assert set(dataset.read(columns=["id"]).column("id").to_pylist()) == {f"reviews/review-0-{i}" for i in range(6)}


def test_http_without_the_token_is_an_error_not_a_quarantine(make_pipeline, http_files, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_REVIEWS", json.dumps({"conn_type": "http", "password": "not-the-token"}))
    pipeline = make_pipeline(
        {
            "reviews": {
                "kind": "http",
                "url": http_files["server"].url,
                "connection": "reviews",
                "checksums": http_files["checksums"],
            }
        },
        stages={"ingest": {}},
    )
    with pytest.raises(OSError, match="HTTP 401.*check the source's connection"):
        ingest(pipeline)


# --- s3 -------------------------------------------------------------------------------


def test_an_s3_source_uses_its_own_connection_not_the_store_credentials(make_pipeline, moto_s3, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "TAMIS_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    rows = wiki_rows(4)
    local = write_jsonl(tmp_path / "wiki.jsonl", rows)
    moto_s3["client"].put_object(
        Bucket=moto_s3["bucket"], Key="teams/data/wiki/date=2026-11-20/wiki.jsonl", Body=local.read_bytes()
    )
    pipeline = make_pipeline(
        {"wiki": {"path": f"s3://{moto_s3['bucket']}/teams/data/wiki", "connection": "lake", "id_field": "id"}},
        stages={"ingest": {}},
    )
    assert pipeline.sources["wiki"].kind == "s3"
    monkeypatch.setenv(
        "AIRFLOW_CONN_LAKE",
        json.dumps(
            {
                "conn_type": "aws",
                "login": moto_s3["key"],
                "password": moto_s3["secret"],
                "extra": {"endpoint_url": moto_s3["endpoint"], "region_name": "us-east-1"},
            }
        ),
    )
    manifest, dataset = ingest(pipeline)
    assert manifest["counts"]["kept"] == 4
    assert commits(manifest) == [f"s3://{moto_s3['bucket']}/teams/data/wiki/date=2026-11-20/wiki.jsonl"]
