"""Preheating a release, the loader's choice between the hot copy and the store, and the
catalog's view of a release, on one small real release (ingest -> tokenize -> pack -> index)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from conftest import REPO
from tamis import catalog
from tamis.export import TokenBinary
from tamis.loader import PackedSequenceDataset
from tamis.pipeline import load_pipeline
from tamis.preheat import PreheatError, hot_copy, latest, preheat
from tamis.release import prepare_workspace, push, release, release_config, store_object_url, write_release

SAMPLE = REPO / "include/sample"
TOKENIZER = SAMPLE / "tokenizer.json"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("preheat")
    web = root / "src/web/date=2026-11-20"
    web.mkdir(parents=True)
    web.joinpath("speeches.jsonl").write_text(
        "".join((SAMPLE / "web/date=2026-11-20/speeches.jsonl").read_text().splitlines(keepends=True)[:6])
    )
    path = root / "small.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "small",
                "team": "data",
                "storage_root": str(root / "store"),
                "workers": 1,
                "sources": {"web": {"path": str(root / "src/web"), "id_field": "id"}},
                "stages": {
                    "ingest": {},
                    "tokenize": {"tokenizer": str(TOKENIZER)},
                    "pack": {"tokenizer": str(TOKENIZER), "seq_len": 128},
                    "index": {"documents": "tokenize"},
                },
            },
            sort_keys=False,
        )
    )
    pipeline = load_pipeline(str(path))
    config = release_config(pipeline)
    manifest = release(pipeline, config)
    return {"root": root, "pipeline": pipeline, "config": config, "manifest": manifest}


def fresh_hot(made, tmp_path):
    return made["config"].model_copy(update={"hot": str(tmp_path / "hot")})


def test_the_release_lists_its_contents_with_the_store_object_of_each_file(made):
    manifest = made["manifest"]
    contents = manifest["contents"]
    assert contents["datasets"] == ["index", "tokenize"]
    paths = {f["path"] for f in contents["files"]}
    assert {
        "data/index/_index/tokens.bin",
        "data/index/_index/tokens.idx",
        "data/index/_index/metadata.parquet",
        "data/tokenize/_manifest.json",
    } <= paths
    assert not any(p.startswith(("data/ingest/", "data/pack/")) for p in paths)
    for entry in contents["files"]:
        stored = Path(store_object_url(made["config"].remote, entry["md5"])).read_bytes()
        assert hashlib.md5(stored).hexdigest() == entry["md5"] and hashlib.sha256(stored).hexdigest() == entry["sha256"]
    assert manifest["team"] == "data" and all(g["success"] for g in manifest["gates"].values())


def test_preheat_copies_verifies_and_marks_ready_once(made, tmp_path):
    config = fresh_hot(made, tmp_path)
    version = made["manifest"]["version"]
    assert hot_copy(config.hot, version) is None
    first = preheat(config, version)
    folder = hot_copy(config.hot, version)
    assert first["copied"] and folder == Path(config.hot) / version
    ready = json.loads((folder / "_READY.json").read_text())
    for entry in ready["files"]:
        assert hashlib.sha256((folder / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
    assert latest(config.hot, "small") == version
    assert preheat(config, version)["copied"] is False


def test_a_damaged_store_object_is_never_made_ready(made, tmp_path):
    config = fresh_hot(made, tmp_path)
    remote = tmp_path / "remote"
    shutil.copytree(made["config"].remote, remote)
    config = config.model_copy(update={"remote": str(remote)})
    version = made["manifest"]["version"]
    victim = next(f for f in made["manifest"]["contents"]["files"] if f["path"].endswith("metadata.parquet"))
    obj = Path(store_object_url(str(remote), victim["md5"]))
    obj.chmod(0o644)
    obj.write_bytes(obj.read_bytes()[:-1] + b"\0")
    with pytest.raises(PreheatError, match="metadata.parquet.*not made ready"):
        preheat(config, version)
    assert not (Path(config.hot) / version).exists()
    assert list((Path(config.hot) / ".incoming").iterdir()) == []
    assert latest(config.hot, "small") is None


def sequences(dataset: PackedSequenceDataset) -> list[list[int]]:
    return [dataset.binary[i].tolist() for i in range(len(dataset.binary))]


def test_the_loader_reads_the_hot_copy_and_never_a_partial_one(made, tmp_path):
    config = fresh_hot(made, tmp_path)
    version = made["manifest"]["version"]
    expected = sequences(PackedSequenceDataset(str(made["config"].workspace) + "/data/index/_index/tokens"))
    cold = PackedSequenceDataset.from_release(
        version, store=config.remote, hot=config.hot, cache=str(tmp_path / "cache")
    )
    assert cold.release["read_from"] == "store" and sequences(cold) == expected
    # A copy without its ready file, as a copy stopped half way leaves it, is not read.
    partial = Path(config.hot) / version
    shutil.copytree(Path(made["config"].workspace) / "data/index", partial / "data/index")
    assert (
        PackedSequenceDataset.from_release(
            version, store=config.remote, hot=config.hot, cache=str(tmp_path / "cache")
        ).release["read_from"]
        == "store"
    )
    shutil.rmtree(partial)
    preheat(config, version)
    hot = PackedSequenceDataset.from_release(
        version, store=config.remote, hot=config.hot, cache=str(tmp_path / "cache")
    )
    assert hot.release["read_from"] == "hot" and hot.binary.prefix.startswith(config.hot)
    assert sequences(hot) == expected
    # A ready copy whose file lost bytes is not read either.
    binary = partial / "data/index/_index/tokens.bin"
    binary.write_bytes(binary.read_bytes()[:-2])
    assert hot_copy(config.hot, version) is None
    again = PackedSequenceDataset.from_release(
        version, store=config.remote, hot=config.hot, cache=str(tmp_path / "cache")
    )
    assert again.release["read_from"] == "store" and sequences(again) == expected


def test_the_loader_downloads_and_verifies_from_an_s3_store(made, moto_s3, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3["secret"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("TAMIS_S3_ENDPOINT_URL", moto_s3["endpoint"])
    config = made["config"].model_copy(update={"remote": f"s3://{moto_s3['bucket']}/releases/small"})
    try:
        prepare_workspace(made["pipeline"], config)
        push(Path(config.workspace), config)
        manifest = write_release(made["pipeline"], config)
    finally:
        prepare_workspace(made["pipeline"], made["config"])  # the workspace's remote is the local one again
    dataset = PackedSequenceDataset.from_release(
        manifest["version"], store=config.remote, cache=str(tmp_path / "cache")
    )
    assert dataset.release["read_from"] == "store" and not Path(dataset.binary.prefix + ".bin").is_symlink()
    expected = TokenBinary(str(made["config"].workspace) + "/data/index/_index/tokens")
    assert len(dataset.binary) == len(expected) and all(
        np.array_equal(dataset.binary[i], expected[i]) for i in range(len(expected))
    )


def test_who_may_read_a_release():
    team, public, nobody = {"team": "data"}, {"team": "data", "public": True}, {"team": None}
    assert (
        catalog.readable(team, {"data"}) and not catalog.readable(team, {"other"}) and not catalog.readable(team, set())
    )
    assert catalog.readable(public, set()) and catalog.readable(nobody, {"other"})
    assert catalog.readable(team, None)  # Airflow without teams: every signed-in user


def test_a_filter_is_a_checked_literal_never_sql():
    schema = pa.schema([("source", pa.string()), ("token_count", pa.int32()), ("lang_score", pa.float64())])
    assert catalog.filter_predicate(schema, {"source": "it's"}) == "\"source\" = 'it''s'"
    assert catalog.filter_predicate(schema, {"token_count": "12"}) == '"token_count" = 12'
    assert catalog.filter_predicate(schema, {}) == "TRUE"
    for filters, message in (
        ({"token_count": "1 OR 1=1"}, "whole number"),
        ({"nope": "x"}, "no column"),
        ({"lang_score": "0.5"}, "cannot be filtered"),
    ):
        with pytest.raises(ValueError, match=message):
            catalog.filter_predicate(schema, filters)


def test_the_catalog_reads_the_workspace_until_the_release_is_preheated(made, tmp_path, monkeypatch):
    path = Path(made["pipeline"].path)
    monkeypatch.setenv(catalog.PIPELINES_ENV, str(path))
    found = catalog.find(made["manifest"]["version"])
    assert found is not None and catalog.view(found)[1] == "workspace"
    rows = catalog.preview(found, 3)
    assert rows["read_from"] == "workspace" and len(rows["rows"]) == 3 and "input_ids" not in rows["columns"]
    sample = catalog.sample(found, {"source": "web"}, 2)
    assert len(sample["rows"]) == 2 and all(r["source"] == "web" and r["text"] for r in sample["rows"])
    clone = tmp_path / "next.yaml"
    clone.write_text(catalog.clone_yaml(found, "small-next"))
    assert load_pipeline(str(clone)).stage("pack").params == made["pipeline"].stage("pack").params
    with pytest.raises(ValueError, match="pipeline name"):
        catalog.clone_yaml(found, "../evil")
